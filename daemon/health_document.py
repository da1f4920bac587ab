"""The health document: the daemon's state as one JSON object, judged ok / degraded / failing.

Health document (``"schema": 1``; built by :func:`build_health_document` from
:class:`HealthInputs`)::

    {
      "schema": 1,
      "status": "ok" | "degraded" | "failing",
      "problems": ["price feed: last tick 312 s ago (max 120 s)", …],   # why not ok
      "version": "0.1.0", "pid": 1234,
      "started_at": ISO-8601, "now": ISO-8601, "uptime_seconds": 3600.0,
      "config": {"generation": 3, "last_reload_error": null | "rebalance.drift_threshold: …"},
      "price_feed": {"source": "oracle", "last_tick_at": ISO | null,
                     "last_tick_age_seconds": 12.3 | null, "max_age_seconds": 120.0,
                     "problems": ["…"]},
      "executor": {"signer": "0x…", "next_nonce": 12 | null, "pending": 0, "handled": 5,
                   "last_loop_age_seconds": 1.5 | null,
                   "unsettled": 0,             # nonces signed, not yet provably consumed
                   "recovering": 0,            # attempts of a previous run being settled
                   "blocked": null | "nonce 7 cannot be sent: …",   # trading paused
                   "stuck_seconds": null | 960.0},  # oldest unsettled, past stuck_after
      "database": {"ok": true, "error": null},
      "chain": {"ok": true, "chain_id": 1, "head_block": 19000000 | null,
                "head_block_at": ISO | null, "head_block_age_seconds": 11.0 | null,
                "error": null},
      "portfolios": {
        "main": {
          "state": "running" | "cooling_down" | "paused" | "parked" | "restarting"
                   | "starting" | "invalid",
          "actor_status": "running",               # the supervisor's word for the actor
          "paused": false, "in_flight": false,
          "last_max_drift": "0.0312" | null,       # a decimal fraction, as a string
          "last_decision": "All tokens within drift tolerance" | null,
          "last_evaluated_at": ISO | null,
          "cooldown_remaining_seconds": 0, "cooldown_remaining_minutes": 0,
          "last_success_at": ISO | null,
          "last_rebalance": {"rebalance_id": 7, "status": "SUCCESS",
                             "tx_hash": "0x…" | null, "error": null} | null,
          "restart_count": 0, "last_error": null
        }
      }
    }

``status``: *failing* when the database or chain is unreachable or prices are stale (no trade
can happen); *degraded* when something needs an operator but trading goes on (a reload error, a
portfolio parked, restarting or invalid, price problems for some tokens, an old chain head, no
price tick yet during start-up); otherwise *ok*. Every reason is listed in ``problems``.
Error texts pass through :func:`~daemon.config.mask_url`: no password reaches the socket.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import attrs

from daemon.config import mask_url
from daemon.cooldown import cooldown_remaining

if TYPE_CHECKING:
    from daemon.executor_status import ExecutorStatus
    from daemon.portfolio import PortfolioState
    from daemon.supervise import Supervised

SCHEMA_VERSION: Final = 1


def _span(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} h"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 3)


def _masked(text: str | None) -> str | None:
    return None if text is None else mask_url(text)


def portfolio_state(supervised: Supervised[PortfolioState], remaining_seconds: float) -> str:
    """A running actor's state in one word (health's ``state``, the metrics' state label):
    parked, paused, restarting, starting, cooling_down or running."""
    if supervised.status == "parked":
        return "parked"
    if supervised.state.paused:
        return "paused"
    if supervised.status == "backoff":
        return "restarting"
    if supervised.status == "starting":
        return "starting"
    return "cooling_down" if remaining_seconds > 0 else "running"


def portfolio_health(
    supervised: Supervised[PortfolioState], now: datetime, cooldown_minutes: Decimal
) -> dict[str, Any]:
    """One portfolio's entry in the health document."""
    state = supervised.state
    remaining = cooldown_remaining(state.last_success_at, now, cooldown_minutes).total_seconds()
    outcome = state.last_outcome
    return {
        "state": portfolio_state(supervised, remaining),
        "actor_status": supervised.status,
        "paused": state.paused,
        "in_flight": state.in_flight,
        "last_max_drift": None if state.last_max_drift is None else str(state.last_max_drift),
        "last_decision": _masked(state.last_decision),
        "last_evaluated_at": _iso(state.last_evaluated_at),
        "cooldown_remaining_seconds": math.ceil(remaining),
        "cooldown_remaining_minutes": math.ceil(remaining / 60),
        "last_success_at": _iso(state.last_success_at),
        "last_rebalance": None
        if outcome is None
        else {
            "rebalance_id": outcome.rebalance_id,
            "status": outcome.status,
            "tx_hash": outcome.tx_hash,
            "error": _masked(outcome.error),
        },
        "restart_count": supervised.restart_count,
        "last_error": _masked(supervised.last_error),
    }


@attrs.frozen(kw_only=True)
class HealthInputs:
    """Everything the health document looks at: the daemon's plain state, passed in, so every
    rule is unit-tested without a daemon.

    ``actors`` is ``Supervisor.actors``; ``invalid`` the portfolios that cannot run, with the
    reason; ``expiring`` the portfolios whose delegations expire soon, with the seconds left;
    ``trio_now`` is ``trio.current_time()`` (the executor's loop clock); ``max_head_age``
    (``prices.max_head_age``) judges the chain head's age (None: not judged — an idle devnet
    mines no blocks): too old is failing with router prices (they are stale), else degraded."""

    now: datetime
    version: str
    started_at: datetime
    config_generation: int
    last_reload_error: str | None
    price_source: str
    last_tick_at: datetime | None
    max_price_age: float
    executor: ExecutorStatus
    database_ok: bool
    chain_ok: bool
    head_block: int | None
    head_block_at: datetime | None
    actors: Mapping[str, Supervised[PortfolioState]]
    cooldown_minutes: Decimal
    invalid: Mapping[str, str] | None = None
    expiring: Mapping[str, float] | None = None
    price_problems: Sequence[str] = ()
    database_error: str | None = None
    chain_error: str | None = None
    chain_id: int | None = None
    max_head_age: float | None = None
    trio_now: float | None = None
    pid: int | None = None


@attrs.define
class _Problems:
    """Why the daemon is not ok: ``failing`` (no trade can happen) and ``degraded``."""

    failing: list[str] = attrs.Factory(list)
    degraded: list[str] = attrs.Factory(list)

    @property
    def status(self) -> str:
        return "failing" if self.failing else "degraded" if self.degraded else "ok"


def build_health_document(inputs: HealthInputs) -> dict[str, Any]:
    """The health document (schema in the module docstring) from the daemon's plain state."""
    problems = _Problems()
    uptime = (inputs.now - inputs.started_at).total_seconds()
    if inputs.last_reload_error:
        problems.degraded.append(
            f"config: last reload failed: {mask_url(inputs.last_reload_error)}"
        )
    price_feed = _price_feed(inputs, uptime, problems)
    database = _database(inputs, problems)
    chain = _chain(inputs, problems)
    portfolios = _portfolios(inputs, problems)
    executor = _executor(inputs, problems)
    return {
        "schema": SCHEMA_VERSION,
        "status": problems.status,
        "problems": problems.failing + problems.degraded,
        "version": inputs.version,
        "pid": os.getpid() if inputs.pid is None else inputs.pid,
        "started_at": _iso(inputs.started_at),
        "now": _iso(inputs.now),
        "uptime_seconds": round(uptime, 3),
        "config": {
            "generation": inputs.config_generation,
            "last_reload_error": _masked(inputs.last_reload_error),
        },
        "price_feed": price_feed,
        "executor": executor,
        "database": database,
        "chain": chain,
        "portfolios": portfolios,
    }


def _price_feed(inputs: HealthInputs, uptime: float, problems: _Problems) -> dict[str, Any]:
    max_price_age = inputs.max_price_age
    tick_age = _age(inputs.now, inputs.last_tick_at)
    if tick_age is None:
        where = problems.failing if uptime > max_price_age else problems.degraded
        where.append("price feed: no tick yet")
    elif tick_age > max_price_age:
        problems.failing.append(
            f"price feed: last tick {tick_age:.0f} s ago (max {max_price_age:.0f} s)"
        )
    price_problems = inputs.price_problems
    if price_problems:
        problems.degraded.append(
            f"price feed: {len(price_problems)} problem(s): {price_problems[0]}"
        )
    return {
        "source": inputs.price_source,
        "last_tick_at": _iso(inputs.last_tick_at),
        "last_tick_age_seconds": tick_age,
        "max_age_seconds": max_price_age,
        "problems": [mask_url(p) for p in price_problems],
    }


def _database(inputs: HealthInputs, problems: _Problems) -> dict[str, Any]:
    if not inputs.database_ok:
        problems.failing.append(
            f"database: unreachable ({mask_url(inputs.database_error or 'no answer')})"
        )
    return {"ok": inputs.database_ok, "error": _masked(inputs.database_error)}


def _chain(inputs: HealthInputs, problems: _Problems) -> dict[str, Any]:
    head_age = _age(inputs.now, inputs.head_block_at)
    max_head_age = inputs.max_head_age
    if not inputs.chain_ok:
        problems.failing.append(
            f"chain: unreachable ({mask_url(inputs.chain_error or 'no answer')})"
        )
    elif max_head_age is not None and head_age is not None and head_age > max_head_age:
        # prices.max_head_age: router prices from this head are stale, so nothing trades on them.
        stale_head = f"chain: head block {head_age:.0f} s old (max {max_head_age:.0f} s)"
        if inputs.price_source == "router":
            problems.failing.append(f"{stale_head}: router prices are stale")
        else:
            problems.degraded.append(stale_head)
    return {
        "ok": inputs.chain_ok,
        "chain_id": inputs.chain_id,
        "head_block": inputs.head_block,
        "head_block_at": _iso(inputs.head_block_at),
        "head_block_age_seconds": head_age,
        "error": _masked(inputs.chain_error),
    }


def _portfolios(inputs: HealthInputs, problems: _Problems) -> dict[str, dict[str, Any]]:
    degraded = problems.degraded
    portfolios: dict[str, dict[str, Any]] = {}
    for name, supervised in sorted(inputs.actors.items()):
        entry = portfolio_health(supervised, inputs.now, inputs.cooldown_minutes)
        portfolios[name] = entry
        if entry["state"] in ("parked", "restarting"):
            degraded.append(f"portfolio {name}: {entry['state']} ({entry['last_error']})")
    for name, left in sorted((inputs.expiring or {}).items()):
        if name in portfolios:
            portfolios[name]["delegations_expire_in_seconds"] = round(left)
        degraded.append(
            f"portfolio {name}: delegations expired {_span(-left)} ago"
            if left <= 0
            else f"portfolio {name}: delegations expire in {_span(left)}"
        )
    for name, reason in sorted((inputs.invalid or {}).items()):
        portfolios[name] = {
            "state": "invalid",
            "actor_status": "not_started",
            "error": mask_url(reason),
        }
        degraded.append(f"portfolio {name}: invalid ({mask_url(reason)})")
    return portfolios


def _executor(inputs: HealthInputs, problems: _Problems) -> dict[str, Any]:
    executor = inputs.executor
    loop_age = (
        None
        if inputs.trio_now is None or executor.last_loop_at is None
        else round(inputs.trio_now - executor.last_loop_at, 3)
    )
    if executor.degraded is not None:
        problems.degraded.append(f"executor: {mask_url(executor.degraded)}")
    return {
        "signer": executor.signer,
        "next_nonce": executor.next_nonce,
        "pending": executor.pending,
        "handled": executor.handled,
        "last_loop_age_seconds": loop_age,
        "unsettled": executor.unsettled,
        "recovering": executor.recovering,
        "blocked": _masked(executor.blocked),
        "stuck_seconds": None if executor.stuck_for is None else round(executor.stuck_for, 1),
    }
