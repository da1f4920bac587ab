"""Metrics: what the daemon has done, in Prometheus exposition format.

The seed's real-time metrics — rebalance success rate, average drift, gas cost per dollar
rebalanced, slippage (actual vs expected output) — are gauges computed when scraped, next to the
raw counters, gauges and histograms they come from (so Prometheus can also compute them over any
window it likes).

Why a :class:`Metrics` object with its own ``CollectorRegistry``: prometheus_client's default
registry is process-global state, which would make two daemons in one test process (or one test
after another) share counters. The daemon creates one ``Metrics`` and calls its methods where
things happen; :meth:`Metrics.render` produces the text for ``{"cmd": "metrics"}`` on the health
socket and for the optional HTTP listener.

Why our own tiny HTTP server (h11 on Trio) instead of ``prometheus_client.start_http_server``:
that one runs in a thread outside the root nursery, so it would outlive cancellation and ignore
our timeouts. :func:`serve_metrics` is an ordinary Trio service: loopback only, one request per
connection, every read and write bounded in time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Final, NoReturn

import h11
import trio
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from daemon.logs import get_logger

RECENT_WINDOW: Final = 100
"""The success rate and average slippage are over this many most recent rebalances."""
EXECUTION_BUCKETS: Final = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
GAS_USD_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250)
SLIPPAGE_BUCKETS: Final = (-0.01, -0.001, 0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05)
ATTEMPT_STATUSES: Final = frozenset({"SUCCESS", "FAILED"})
"""Statuses that count as real attempts for the success rate (not DRY_RUN or skips)."""
PORTFOLIO_STATES: Final = ("running", "cooling_down", "paused", "parked", "restarting", "starting")
"""The values of ``driftd_portfolio_state``'s ``state`` label (the health document's states of a
running actor)."""
HTTP_TIMEOUT: Final = 10.0
MAX_HTTP_CONNECTIONS: Final = 16


def slippage_ratio(expected: int | Decimal, actual: int | Decimal) -> float | None:
    """How much less a swap paid out than quoted: (expected − actual) / expected.

    Positive is worse than expected, negative better; None when there was nothing expected.
    For several legs pass the sums of their USD values."""
    if expected <= 0:
        return None
    return float((Decimal(expected) - Decimal(actual)) / Decimal(expected))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


class Metrics:
    """Every metric driftd exposes, in a registry of its own. Update it where things happen."""

    def __init__(
        self,
        *,
        version: str = "",
        now: Callable[[], float] = time.time,
        on_collect: Callable[[Metrics], None] | None = None,
    ) -> None:
        """``now`` is the wall clock (tick ages); ``on_collect`` runs before every render, to
        copy live state in (cooldowns, executor counters) rather than pushing it constantly."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._now = now
        self._on_collect = on_collect
        self._recent_outcomes: deque[bool] = deque(maxlen=RECENT_WINDOW)
        self._recent_slippage: deque[float] = deque(maxlen=RECENT_WINDOW)
        self._drifts: dict[str, float] = {}
        self._gas_usd_total = 0.0
        self._traded_usd_total = 0.0
        self._last_tick: float | None = None
        self._price_head: float | None = None
        self._chain_head: float | None = None
        self._states: dict[str, str] = {}

        Info("driftd_build", "The running driftd.", registry=self.registry).info(
            {"version": version}
        )
        # Registration order is exposition order: counters, gauges, histograms.
        self._add_counters()
        self._add_gauges()
        self._add_computed_gauges()
        self._add_histograms()

    # ---------------------------------------------------------------- the families

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def _computed(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        """A gauge whose value is computed when scraped."""
        self._gauge(name, documentation).set_function(value)

    def _add_counters(self) -> None:
        self.rebalances = self._counter(
            "driftd_rebalances",
            "Rebalance attempts by terminal status (SUCCESS, FAILED, DRY_RUN, SKIPPED).",
            "portfolio",
            "status",
        )
        self.price_ticks = self._counter(
            "driftd_price_ticks", "Price feed ticks that published a snapshot.", "source"
        )
        self.price_tick_failures = self._counter(
            "driftd_price_tick_failures", "Price feed ticks that failed.", "source"
        )
        self.rpc_requests = self._counter(
            "driftd_rpc_requests",
            "JSON-RPC requests by method and outcome (ok, error).",
            "method",
            "outcome",
        )
        self.alerts = self._counter("driftd_alerts", "Alerts raised, by kind.", "kind")
        self.config_reloads = self._counter(
            "driftd_config_reloads", "SIGHUP reloads by outcome (ok, error).", "outcome"
        )
        self.gas_cost_usd_total = self._counter(
            "driftd_gas_cost_usd", "Gas paid by rebalances, in USD."
        )
        self.traded_usd_total = self._counter(
            "driftd_traded_usd", "USD value traded by successful rebalances."
        )

    def _add_gauges(self) -> None:
        self.max_drift = self._gauge(
            "driftd_portfolio_max_drift_ratio",
            "Largest |drift| of a portfolio's tradable tokens at its last evaluation.",
            "portfolio",
        )
        self.cooldown = self._gauge(
            "driftd_portfolio_cooldown_remaining_seconds",
            "Seconds until the portfolio may rebalance again.",
            "portfolio",
        )
        self.portfolio_state = self._gauge(
            "driftd_portfolio_state",
            "1, labelled with the portfolio's current state (one of "
            + ", ".join(PORTFOLIO_STATES)
            + "): one series per portfolio.",
            "portfolio",
            "state",
        )
        self.executor_requested = self._gauge(
            "driftd_executor_requested_rebalances",
            "Portfolios whose rebalance request waits for or is carried out by the executor.",
        )
        self.executor_pending = self._gauge(
            "driftd_executor_pending_transactions",
            "Rebalance requests the executor is carrying out now.",
        )
        self.executor_next_nonce = self._gauge(
            "driftd_executor_next_nonce", "The signer's next nonce."
        )
        self.executor_unsettled = self._gauge(
            "driftd_executor_unsettled_transactions",
            "Nonces signed and not yet provably consumed.",
        )
        self.executor_recovering = self._gauge(
            "driftd_executor_recovering_attempts",
            "Attempts of a previous run still being settled.",
        )
        self.executor_blocked = self._gauge(
            "driftd_executor_signer_blocked",
            "1 while no new transaction can be sent (SIGNER_BLOCKED: e.g. no ETH for gas).",
        )
        self.executor_stuck = self._gauge(
            "driftd_executor_stuck_seconds",
            "Seconds the oldest unsettled transaction has been open once past "
            "execution.stuck_after (TX_STUCK), else 0.",
        )
        self.executor_lease_held = self._gauge(
            "driftd_executor_signer_lease_held",
            "1 while this process holds the signer's lease and may sign; 0 for a standby.",
        )
        self.database_up = self._gauge(
            "driftd_database_up", "1 if the last database probe succeeded."
        )
        self.chain_up = self._gauge("driftd_chain_up", "1 if the last chain head probe succeeded.")
        self._computed(
            "driftd_chain_head_block_age_seconds",
            "Seconds since the timestamp of the latest head block the probes saw (NaN before "
            "the first).",
            self._chain_head_age,
        )
        self.drift_threshold = self._gauge(
            "driftd_drift_threshold_ratio",
            "rebalance.drift_threshold in force: a larger max drift rebalances.",
        )
        self.high_drift = self._gauge(
            "driftd_high_drift_alert_ratio",
            "alerts.high_drift in force: a larger max drift raises HIGH_DRIFT.",
        )
        self.price_max_age = self._gauge(
            "driftd_price_max_age_seconds",
            "prices.max_age in force: older prices are not traded on.",
        )
        self.config_generation = self._gauge(
            "driftd_config_generation", "Configuration generation (+1 per reload)."
        )
        self.last_tick_timestamp = self._gauge(
            "driftd_price_last_tick_timestamp_seconds",
            "Unix time of the last successful price tick.",
        )
        self._computed(
            "driftd_price_last_tick_age_seconds",
            "Seconds since the last successful price tick (NaN before the first).",
            self._tick_age,
        )
        self.price_head_timestamp = self._gauge(
            "driftd_price_head_block_timestamp_seconds",
            "Timestamp of the block the latest router prices were read at.",
        )
        self._computed(
            "driftd_price_head_block_age_seconds",
            "Seconds since the timestamp of the block the latest router prices were read at "
            "(NaN without router prices); prices.max_head_age judges it.",
            self._head_age,
        )

    def _add_computed_gauges(self) -> None:
        """The seed's real-time metrics, computed from what the updates below record."""
        self._computed(
            "driftd_rebalance_success_ratio",
            f"SUCCESS / (SUCCESS + FAILED) over the last {RECENT_WINDOW} attempts (NaN if none).",
            lambda: _ratio(sum(self._recent_outcomes), len(self._recent_outcomes)),
        )
        self._computed(
            "driftd_average_drift_ratio",
            "Mean of every portfolio's last max drift (NaN if none evaluated yet).",
            lambda: _mean(list(self._drifts.values())),
        )
        self._computed(
            "driftd_gas_cost_per_usd_rebalanced",
            "Gas paid in USD per USD traded, since start (NaN before the first trade).",
            lambda: _ratio(self._gas_usd_total, self._traded_usd_total),
        )
        self._computed(
            "driftd_slippage_ratio_average",
            "Mean (expected − actual) / expected output over the last "
            f"{RECENT_WINDOW} rebalances with swaps (NaN if none).",
            lambda: _mean(list(self._recent_slippage)),
        )

    def _add_histograms(self) -> None:
        self.execution_seconds = Histogram(
            "driftd_rebalance_execution_seconds",
            "From the decision to the recorded outcome.",
            buckets=EXECUTION_BUCKETS,
            registry=self.registry,
        )
        self.gas_cost_usd = Histogram(
            "driftd_rebalance_gas_cost_usd",
            "Gas cost of one rebalance, in USD.",
            buckets=GAS_USD_BUCKETS,
            registry=self.registry,
        )
        self.slippage = Histogram(
            "driftd_rebalance_slippage_ratio",
            "(expected − actual) / expected output of one rebalance; negative is better.",
            buckets=SLIPPAGE_BUCKETS,
            registry=self.registry,
        )

    # ---------------------------------------------------------------- updates

    def rebalance_finished(
        self,
        portfolio: str,
        status: str,
        *,
        execution_ms: float | None = None,
        gas_usd: Decimal | float | None = None,
        traded_usd: Decimal | float | None = None,
        slippage: float | None = None,
    ) -> None:
        """One rebalance attempt reached its terminal status.

        ``gas_usd`` counts for failures too (a reverted swap still pays gas); ``traded_usd``
        only for SUCCESS. ``slippage`` is :func:`slippage_ratio` of the attempt's outputs."""
        self.rebalances.labels(portfolio=portfolio, status=status).inc()
        if status in ATTEMPT_STATUSES:
            self._recent_outcomes.append(status == "SUCCESS")
        if execution_ms is not None:
            self.execution_seconds.observe(execution_ms / 1000)
        if gas_usd is not None:
            gas = float(gas_usd)
            self.gas_cost_usd.observe(gas)
            self.gas_cost_usd_total.inc(gas)
            self._gas_usd_total += gas
        if traded_usd is not None and status == "SUCCESS":
            traded = float(traded_usd)
            self.traded_usd_total.inc(traded)
            self._traded_usd_total += traded
        if slippage is not None:
            self.slippage.observe(slippage)
            self._recent_slippage.append(slippage)

    def drift(self, portfolio: str, max_drift: Decimal | float) -> None:
        """A portfolio's max drift at its latest evaluation."""
        value = float(max_drift)
        self._drifts[portfolio] = value
        self.max_drift.labels(portfolio=portfolio).set(value)

    def cooldown_remaining(self, portfolio: str, seconds: float) -> None:
        self.cooldown.labels(portfolio=portfolio).set(max(0.0, seconds))

    def portfolio_state_is(self, portfolio: str, state: str) -> None:
        """A running portfolio's state, one of :data:`PORTFOLIO_STATES` (only a change costs:
        this runs for every portfolio at every scrape)."""
        previous = self._states.get(portfolio)
        if previous == state:
            return
        if previous is not None:
            self.portfolio_state.remove(portfolio, previous)
        self._states[portfolio] = state
        self.portfolio_state.labels(portfolio=portfolio, state=state).set(1)

    def retain_portfolios(self, running: Iterable[str]) -> None:
        """Forget every portfolio given a state that is not ``running`` (deactivated)."""
        for gone in self._states.keys() - set(running):
            self.forget_portfolio(gone)

    def forget_portfolio(self, portfolio: str) -> None:
        """A portfolio was deactivated: drop its gauges (its counters stay, as counters do)."""
        self._drifts.pop(portfolio, None)
        for gauge in (self.max_drift, self.cooldown):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(portfolio)
        state = self._states.pop(portfolio, None)
        if state is not None:
            self.portfolio_state.remove(portfolio, state)

    def price_tick(self, source: str, at: float | None = None) -> None:
        """A snapshot was published; ``at`` is its Unix time (default: now)."""
        self.price_ticks.labels(source=source).inc()
        self._last_tick = self._now() if at is None else at
        self.last_tick_timestamp.set(self._last_tick)

    def price_head(self, block_timestamp: float) -> None:
        """Router prices were read at a block with this Unix timestamp."""
        self._price_head = block_timestamp
        self.price_head_timestamp.set(block_timestamp)

    def price_tick_failed(self, source: str) -> None:
        self.price_tick_failures.labels(source=source).inc()

    def rpc_request(self, method: str, ok: bool) -> None:
        self.rpc_requests.labels(method=method, outcome="ok" if ok else "error").inc()

    def executor(
        self,
        *,
        pending: int,
        next_nonce: int | None,
        requested: int = 0,
        unsettled: int = 0,
        recovering: int = 0,
        blocked: bool = False,
        stuck_seconds: float | None = None,
        lease_held: bool = False,
    ) -> None:
        self.executor_pending.set(pending)
        self.executor_lease_held.set(lease_held)
        if next_nonce is not None:
            self.executor_next_nonce.set(next_nonce)
        self.executor_requested.set(requested)
        self.executor_unsettled.set(unsettled)
        self.executor_recovering.set(recovering)
        self.executor_blocked.set(blocked)
        self.executor_stuck.set(stuck_seconds or 0.0)

    def probed(self, *, database_ok: bool, chain_ok: bool, head_at: float | None) -> None:
        """What the background probes last saw; ``head_at`` is the head block's Unix time."""
        self.database_up.set(database_ok)
        self.chain_up.set(chain_ok)
        if head_at is not None:
            self._chain_head = head_at

    def settings(
        self, *, drift_threshold: Decimal, high_drift: Decimal, max_price_age: float
    ) -> None:
        """The thresholds in force, so that dashboards and alert rules compare against them."""
        self.drift_threshold.set(float(drift_threshold))
        self.high_drift.set(float(high_drift))
        self.price_max_age.set(max_price_age)

    def alert(self, kind: str) -> None:
        self.alerts.labels(kind=kind).inc()

    def config_reloaded(self, *, ok: bool, generation: int) -> None:
        self.config_reloads.labels(outcome="ok" if ok else "error").inc()
        self.config_generation.set(generation)

    # ---------------------------------------------------------------- output

    def render(self) -> str:
        """The exposition text (Prometheus text format 0.0.4)."""
        if self._on_collect is not None:
            self._on_collect(self)
        return generate_latest(self.registry).decode()

    def _tick_age(self) -> float:
        return math.nan if self._last_tick is None else max(0.0, self._now() - self._last_tick)

    def _head_age(self) -> float:
        return math.nan if self._price_head is None else max(0.0, self._now() - self._price_head)

    def _chain_head_age(self) -> float:
        return math.nan if self._chain_head is None else max(0.0, self._now() - self._chain_head)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


# ============================================================================ HTTP listener


def parse_listen(listen: str) -> tuple[str, int]:
    """``health.metrics_listen`` → (host, port). Only loopback hosts: metrics reveal positions
    and activity, and there is no authentication on this listener.

    Accepts ``127.0.0.1:9464``, ``[::1]:9464`` and ``localhost:9464``; ValueError otherwise."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"health.metrics_listen must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"health.metrics_listen must name a loopback IP address, got {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"health.metrics_listen must be a loopback address, got {host!r}")
    return host, int(port_text)


async def serve_metrics(
    listen: str,
    render: Callable[[], str],
    *,
    request_timeout: float = HTTP_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``GET /metrics`` on ``listen`` (loopback) until cancelled; started with the port.

    Each connection is its own task in this function's nursery and carries one request, read
    and answered within ``request_timeout``; a stuck scraper only ever holds its own task."""
    host, port = parse_listen(listen)
    log = get_logger(actor="metrics")
    listeners = await trio.open_tcp_listeners(port, host=host)
    active = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal active
        active += 1
        try:
            async with stream:
                with trio.move_on_after(request_timeout):
                    await _answer(stream, render, busy=active > MAX_HTTP_CONNECTIONS)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("metrics_client_error", error=f"{type(exc).__name__}: {exc}")
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        bound = listeners[0].socket.getsockname()[1]
        log.info("metrics_listening", host=host, port=bound)
        task_status.started(bound)
        await trio.serve_listeners(connection, listeners, handler_nursery=nursery)
    raise AssertionError("unreachable")


async def _answer(stream: trio.SocketStream, render: Callable[[], str], *, busy: bool) -> None:
    connection = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    while request is None:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            # b"" (the client closed) makes h11 answer ConnectionClosed, or raise
            # RemoteProtocolError for half a request.
            connection.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.ConnectionClosed):
            return
    method, target = request.method.decode(), request.target.decode()
    status, body, extra = 200, b"", [(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode())]
    if busy:
        status, body, extra = 503, b"too many connections\n", []
    elif target.split("?", 1)[0] != "/metrics":
        status, body, extra = 404, b"driftd serves /metrics\n", []
    elif method not in ("GET", "HEAD"):
        status, body, extra = 405, b"GET or HEAD\n", [(b"allow", b"GET, HEAD")]
    else:
        try:
            body = render().encode()
        except Exception as exc:  # a broken collector must not end the daemon
            log = get_logger(actor="metrics")
            log.error("metrics_render_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            status, body, extra = 500, b"metrics unavailable; see the daemon's log\n", []
    if status != 200:
        extra = [(b"content-type", b"text/plain; charset=utf-8"), *extra]
    headers = [*extra, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await stream.send_all(connection.send(h11.Response(status_code=status, headers=headers)))
    if method != "HEAD":
        await stream.send_all(connection.send(h11.Data(data=body)))
    await stream.send_all(connection.send(h11.EndOfMessage()))
