"""Alerts: once per window, delivered to a loopback webhook, never blocking when it is down."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
import trio
import trio.testing
from http_server import Request, Response, loopback_http
from schema_defaults import holder

from daemon.alerts import AlertSink
from daemon.metrics import Metrics

T0 = datetime(2026, 11, 24, tzinfo=UTC)


async def test_alert_reaches_the_webhook_once_and_repeats_are_suppressed() -> None:
    received: list[dict[str, object]] = []

    async def webhook(request: Request) -> Response:
        received.append(json.loads(request.body))
        return Response(body=b"ok", content_type="text/plain")

    with trio.fail_after(10):
        async with loopback_http(webhook) as server, httpx.AsyncClient() as client:
            sink = AlertSink(
                holder(alerts={"webhook_url": server.url + "/hook", "repeat_window": 3600.0}),
                lambda: T0,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run, client)
                assert sink.fire("HIGH_DRIFT", {"portfolio": "p1", "drift": "0.31"})
                assert not sink.fire("HIGH_DRIFT", {"portfolio": "p1", "drift": "0.33"})
                assert sink.fire("HIGH_DRIFT", {"portfolio": "p2", "drift": "0.4"})
                while sink.delivered < 2:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert [r["portfolio"] for r in received] == ["p1", "p2"]
    assert received[0]["kind"] == "HIGH_DRIFT"
    assert received[0]["drift"] == "0.31"
    assert received[0]["text"] == "driftd HIGH_DRIFT for portfolio p1: drift=0.31"


async def test_repeat_fires_again_after_the_window(autojump_clock: trio.testing.MockClock) -> None:
    sink = AlertSink(holder(alerts={"repeat_window": 60.0}), lambda: T0)
    assert sink.fire("REBALANCE_FAILED", {"portfolio": "p", "error": "x"})
    await trio.sleep(30)
    assert not sink.fire("REBALANCE_FAILED", {"portfolio": "p", "error": "x"})
    await trio.sleep(31)
    assert sink.fire("REBALANCE_FAILED", {"portfolio": "p", "error": "x"})


async def test_webhook_down_never_blocks_and_is_retried() -> None:
    attempts: list[str] = []

    async def failing(request: Request) -> Response:
        attempts.append(request.target)
        return Response(status=503)

    with trio.fail_after(10):
        async with loopback_http(failing) as server, httpx.AsyncClient() as client:
            sink = AlertSink(
                holder(alerts={"webhook_url": server.url, "repeat_window": 0.0}),
                lambda: T0,
                backoff_initial=0.01,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run, client)
                before = time.perf_counter()
                for n in range(150):  # more than the queue holds: the overflow is dropped
                    sink.fire("ACTOR_PARKED", {"portfolio": f"p{n}"})
                assert time.perf_counter() - before < 1  # synchronous, never waits on the hook
                while sink.failed_deliveries < 1:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert len(attempts) >= 4  # the first alert was retried
    assert sink.failed_deliveries >= 1
    assert sink.delivered == 0


def test_unknown_kind_is_an_error() -> None:
    sink = AlertSink(holder(), lambda: T0)
    with pytest.raises(ValueError, match="unknown alert kind"):
        sink.fire("NOPE", {})


async def test_each_alert_fired_is_counted_and_a_suppressed_repeat_is_not() -> None:
    metrics = Metrics()
    sink = AlertSink(holder(), lambda: T0, counter=metrics)
    assert sink.fire("HIGH_DRIFT", {"portfolio": "p1"})
    assert not sink.fire("HIGH_DRIFT", {"portfolio": "p1"})
    assert sink.fire("TX_STUCK", {"nonce": 3})
    counted = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.render().splitlines()
        if line.startswith("driftd_alerts_total")
    }
    assert counted == {
        'driftd_alerts_total{kind="HIGH_DRIFT"}': 1.0,
        'driftd_alerts_total{kind="TX_STUCK"}': 1.0,
    }
