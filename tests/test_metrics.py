"""Metrics: the exposition text parsed back with prometheus_client's own parser, and the loopback
HTTP listener spoken to with a real HTTP client."""

from __future__ import annotations

import functools
import math
from decimal import Decimal

import httpx
import pytest
import trio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics, parse_listen, serve_metrics, slippage_ratio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_seed_metrics_are_computed_from_the_updates() -> None:
    metrics = Metrics(version="0.1.0")
    metrics.rebalance_finished(
        "main",
        "SUCCESS",
        execution_ms=4200,
        gas_usd=Decimal("3"),
        traded_usd=Decimal(1000),
        slippage=0.002,
    )
    metrics.rebalance_finished(
        "main", "SUCCESS", execution_ms=800, gas_usd=2.0, traded_usd=500.0, slippage=0.004
    )
    # A failed swap still paid gas but traded nothing.
    metrics.rebalance_finished("alt", "FAILED", execution_ms=1500, gas_usd=1.0, traded_usd=700)
    metrics.rebalance_finished("alt", "DRY_RUN", execution_ms=300)
    metrics.drift("main", Decimal("0.10"))
    metrics.drift("alt", Decimal("0.30"))
    text = metrics.render()

    assert value(text, "driftd_rebalances_total", portfolio="main", status="SUCCESS") == 2
    assert value(text, "driftd_rebalances_total", portfolio="alt", status="FAILED") == 1
    assert value(text, "driftd_rebalances_total", portfolio="alt", status="DRY_RUN") == 1
    # Dry runs are not attempts: 2 of 3.
    assert value(text, "driftd_rebalance_success_ratio") == pytest.approx(2 / 3)
    assert value(text, "driftd_average_drift_ratio") == pytest.approx(0.20)
    assert value(text, "driftd_portfolio_max_drift_ratio", portfolio="alt") == pytest.approx(0.3)
    # (3 + 2 + 1) USD of gas for 1500 USD traded.
    assert value(text, "driftd_gas_cost_per_usd_rebalanced") == pytest.approx(6 / 1500)
    assert value(text, "driftd_gas_cost_usd_total") == pytest.approx(6)
    assert value(text, "driftd_traded_usd_total") == pytest.approx(1500)
    assert value(text, "driftd_slippage_ratio_average") == pytest.approx(0.003)
    assert value(text, "driftd_rebalance_slippage_ratio_count") == 2
    assert value(text, "driftd_rebalance_execution_seconds_count") == 4
    assert value(text, "driftd_rebalance_execution_seconds_sum") == pytest.approx(6.8)
    assert value(text, "driftd_rebalance_execution_seconds_bucket", le="1.0") == 2
    assert value(text, "driftd_rebalance_gas_cost_usd_bucket", le="2.5") == 2
    assert value(text, "driftd_build_info", version="0.1.0") == 1


def test_before_anything_happened_the_ratios_are_nan() -> None:
    text = Metrics().render()
    for name in (
        "driftd_rebalance_success_ratio",
        "driftd_average_drift_ratio",
        "driftd_gas_cost_per_usd_rebalanced",
        "driftd_slippage_ratio_average",
        "driftd_price_last_tick_age_seconds",
    ):
        assert math.isnan(value(text, name)), name


def test_gauges_counters_and_tick_age() -> None:
    clock = [1000.0]
    metrics = Metrics(now=lambda: clock[0])
    metrics.price_tick("oracle")
    metrics.price_tick_failed("oracle")
    metrics.price_tick_failed("router")
    metrics.rpc_request("eth_call", ok=True)
    metrics.rpc_request("eth_call", ok=False)
    metrics.executor(pending=2, next_nonce=17)
    metrics.cooldown_remaining("main", 300)
    metrics.cooldown_remaining("late", -5)
    metrics.alert("HIGH_DRIFT")
    metrics.config_reloaded(ok=False, generation=3)
    clock[0] = 1042.5
    text = metrics.render()
    assert value(text, "driftd_price_ticks_total", source="oracle") == 1
    assert value(text, "driftd_price_tick_failures_total", source="router") == 1
    assert value(text, "driftd_rpc_requests_total", method="eth_call", outcome="error") == 1
    assert value(text, "driftd_executor_pending_transactions") == 2
    assert value(text, "driftd_executor_next_nonce") == 17
    assert value(text, "driftd_portfolio_cooldown_remaining_seconds", portfolio="main") == 300
    assert value(text, "driftd_portfolio_cooldown_remaining_seconds", portfolio="late") == 0
    assert value(text, "driftd_alerts_total", kind="HIGH_DRIFT") == 1
    assert value(text, "driftd_config_reloads_total", outcome="error") == 1
    assert value(text, "driftd_config_generation") == 3
    assert value(text, "driftd_price_last_tick_timestamp_seconds") == 1000
    assert value(text, "driftd_price_last_tick_age_seconds") == 42.5


def test_forgotten_portfolio_loses_its_gauges_but_keeps_counters() -> None:
    metrics = Metrics()
    metrics.drift("gone", 0.5)
    metrics.drift("kept", 0.1)
    metrics.cooldown_remaining("gone", 60)
    metrics.rebalance_finished("gone", "SUCCESS")
    metrics.forget_portfolio("gone")
    metrics.forget_portfolio("never-seen")
    text = metrics.render()
    keys = samples(text)
    assert ("driftd_portfolio_max_drift_ratio", (("portfolio", "gone"),)) not in keys
    assert ("driftd_portfolio_cooldown_remaining_seconds", (("portfolio", "gone"),)) not in keys
    assert value(text, "driftd_average_drift_ratio") == pytest.approx(0.1)
    assert value(text, "driftd_rebalances_total", portfolio="gone", status="SUCCESS") == 1


def test_each_daemon_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.rebalance_finished("main", "SUCCESS")
    assert ("driftd_rebalances_total", (("portfolio", "main"), ("status", "SUCCESS"))) not in (
        samples(second.render())
    )
    # Nothing was registered in prometheus_client's process-wide default registry.
    assert not any(family.name.startswith("driftd") for family in REGISTRY.collect())


def test_on_collect_copies_live_state_in_before_rendering() -> None:
    live = {"pending": 0}
    metrics = Metrics(
        on_collect=lambda m: m.executor(pending=live["pending"], next_nonce=None),
    )
    live["pending"] = 3
    assert value(metrics.render(), "driftd_executor_pending_transactions") == 3


def test_slippage_ratio() -> None:
    assert slippage_ratio(1000, 990) == pytest.approx(0.01)
    assert slippage_ratio(Decimal(1000), Decimal(1010)) == pytest.approx(-0.01)
    assert slippage_ratio(0, 5) is None


def test_listen_address_must_be_loopback() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("localhost:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "example.com:80", "9464", "h:x"):
        with pytest.raises(ValueError, match=r"health\.metrics_listen"):
            parse_listen(bad)


async def test_http_listener_serves_metrics() -> None:
    metrics = Metrics(version="0.1.0")
    metrics.drift("main", 0.05)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(serve_metrics, "127.0.0.1:0", metrics.render)
            )
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"{base}/metrics")
                head = await client.head(f"{base}/metrics")
                missing = await client.get(f"{base}/")
                post = await client.post(f"{base}/metrics", content=b"x")
            nursery.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert value(response.text, "driftd_portfolio_max_drift_ratio", portfolio="main") == 0.05
    assert head.status_code == 200
    assert head.content == b""
    assert missing.status_code == 404
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


async def test_http_listener_survives_garbage_and_a_broken_collector() -> None:
    def broken() -> str:
        raise RuntimeError("collector bug")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(serve_metrics, "127.0.0.1:0", broken))
            garbage = await trio.open_tcp_stream("127.0.0.1", port)
            async with garbage:
                await garbage.send_all(b"\x00\x01 not http\r\n\r\n")
                await garbage.send_eof()
                while await garbage.receive_some(1000):
                    pass
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
            nursery.cancel_scope.cancel()
    assert response.status_code == 500


async def test_http_listener_drops_a_silent_client() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                functools.partial(
                    serve_metrics, "127.0.0.1:0", Metrics().render, request_timeout=0.3
                )
            )
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            async with silent:
                await silent.send_all(b"GET /metr")
                # Meanwhile others are served.
                async with httpx.AsyncClient(timeout=5) as client:
                    assert (await client.get(f"http://127.0.0.1:{port}/metrics")).is_success
                assert await silent.receive_some(100) == b""
            nursery.cancel_scope.cancel()
