"""Alerts: a structured log event always, a webhook POST when configured, repeats suppressed.

Kinds: ``HIGH_DRIFT``, ``REBALANCE_FAILED``, ``REBALANCE_PARTIAL``, ``HIGH_GAS_COST``,
``PRICE_STALE``, ``ACTOR_PARKED``, ``SIGNER_BLOCKED`` (a transaction the node will not take:
trading paused for the signer), ``CHAIN_MISMATCH`` (the RPC node serves another chain than
``chain.chain_id``: nothing is signed until it is ours again), ``TX_STUCK`` (a transaction
unsettled past ``execution.stuck_after``), ``NONCE_CONSUMED`` (another sender used the signer's
nonce), ``DELEGATION_EXPIRING`` (a portfolio's delegations expire within a week, or have
expired).
The same kind for the same portfolio fires once per ``alerts.repeat_window``.

Why a queue and a separate sender: trading must never wait on a webhook. :meth:`AlertSink.fire`
is synchronous and never blocks — it logs, then hands the alert to the sender over a bounded
channel (dropping, with a log line, if the sender is that far behind). The sender POSTs with
retries and exponential backoff and gives up quietly; a webhook being down costs nothing else.
The payload is Slack-compatible (``text``) with the structured fields beside it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

import attrs
import httpx
import trio

from daemon.backoff import Backoff
from daemon.logs import get_logger

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.live_config import ConfigSource

ALERT_KINDS: Final = frozenset(
    {
        "HIGH_DRIFT",
        "REBALANCE_FAILED",
        "REBALANCE_PARTIAL",
        "HIGH_GAS_COST",
        "PRICE_STALE",
        "ACTOR_PARKED",
        "SIGNER_BLOCKED",
        "CHAIN_MISMATCH",
        "TX_STUCK",
        "NONCE_CONSUMED",
        "DELEGATION_EXPIRING",
    }
)
QUEUE_SIZE: Final = 100
WEBHOOK_ATTEMPTS: Final = 4
WEBHOOK_TIMEOUT: Final = 5.0
BACKOFF_INITIAL: Final = 1.0


class Alerter(Protocol):
    """Where actors raise alerts (implemented by :class:`AlertSink`)."""

    def fire(self, kind: str, fields: Mapping[str, Any]) -> bool:
        """Raise ``kind`` about ``fields``; False if suppressed as a repeat."""


class AlertCounter(Protocol):
    """Counts alerts raised (implemented by :class:`daemon.metrics.Metrics`)."""

    def alert(self, kind: str) -> None: ...


@attrs.frozen
class AlertSettings:
    """The live-reloadable part (``[alerts]``)."""

    webhook_url: str
    repeat_window: float

    @classmethod
    def from_config(cls, config: Config) -> AlertSettings:
        return cls(webhook_url=config.alerts.webhook_url, repeat_window=config.alerts.repeat_window)


@attrs.frozen
class Alert:
    """One alert as delivered."""

    kind: str
    portfolio: str | None
    text: str
    fields: Mapping[str, Any]
    at: datetime

    def payload(self) -> dict[str, Any]:
        """The webhook body: Slack's ``text`` plus the structured fields."""
        return {
            "text": self.text,
            "kind": self.kind,
            "portfolio": self.portfolio,
            "at": self.at.isoformat(),
            **{k: v for k, v in self.fields.items() if k not in ("kind", "portfolio", "at")},
        }


def describe(kind: str, fields: Mapping[str, Any]) -> str:
    """A one-line human text for chat."""
    where = f" for portfolio {fields['portfolio']}" if fields.get("portfolio") else ""
    detail = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "portfolio")
    return f"driftd {kind}{where}" + (f": {detail}" if detail else "")


class AlertSink:
    """Fires alerts. Create once; run :meth:`run` in a nursery to deliver webhooks."""

    def __init__(
        self,
        config: ConfigSource,
        now: Callable[[], datetime],
        *,
        counter: AlertCounter | None = None,
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
    ) -> None:
        """``config`` supplies ``[alerts]`` afresh on every use; ``counter`` counts each alert
        fired (not the suppressed repeats)."""
        self._config = config
        self._counter = counter
        self._now = now
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter
        self._backoff_initial = backoff_initial
        self._last_fired: dict[tuple[str, str | None], float] = {}
        self._send, self._receive = trio.open_memory_channel[Alert](QUEUE_SIZE)
        self._log = get_logger(actor="alerts")
        self.fired: list[Alert] = []
        """Alerts fired since start, newest last (bounded; for health and tests)."""
        self.delivered = 0
        self.failed_deliveries = 0

    def fire(self, kind: str, fields: Mapping[str, Any]) -> bool:
        """Log and queue an alert; False if suppressed as a repeat. Never blocks."""
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        portfolio = fields.get("portfolio")
        key = (kind, None if portfolio is None else str(portfolio))
        now = self._clock()
        last = self._last_fired.get(key)
        if last is not None and now - last < self._settings().repeat_window:
            self._log.debug("alert_suppressed", kind=kind, portfolio=portfolio)
            return False
        self._last_fired[key] = now
        alert = Alert(
            kind=kind,
            portfolio=key[1],
            text=describe(kind, fields),
            fields=dict(fields),
            at=self._now(),
        )
        self.fired.append(alert)
        del self.fired[:-100]
        self._log.warning("alert", **alert.payload())
        if self._settings().webhook_url:
            try:
                self._send.send_nowait(alert)
            except trio.WouldBlock:
                self._log.error("alert_queue_full", kind=kind, portfolio=portfolio)
        if self._counter is not None:
            self._counter.alert(kind)
        return True

    def _settings(self) -> AlertSettings:
        return AlertSettings.from_config(self._config.current)

    async def run(
        self,
        client: httpx.AsyncClient,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Deliver queued alerts to the webhook, one at a time, forever."""
        task_status.started()
        async for alert in self._receive:
            await self._deliver(client, alert)
        raise RuntimeError("alert queue closed")

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> None:
        url = self._settings().webhook_url
        if not url:
            return
        body = json.dumps(alert.payload(), default=str).encode()
        # No ceiling: WEBHOOK_ATTEMPTS bounds the waits.
        schedule = Backoff(initial=self._backoff_initial, maximum=math.inf, jitter=0.5)
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = await client.post(
                    url,
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=WEBHOOK_TIMEOUT,
                )
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            self._log.warning(
                "alert_delivery_failed", kind=alert.kind, attempt=attempt, error=problem
            )
            if attempt < WEBHOOK_ATTEMPTS:
                await trio.sleep(schedule.delay(attempt - 1, self._rng))
        self.failed_deliveries += 1
