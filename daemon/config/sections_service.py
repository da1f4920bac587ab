"""The schema's service sections: the database, the health socket, alerts, the supervisor,
logging and the history kept for reports — what running driftd as a service needs.

Each key is declared once with its default, parser, limits and documentation
(:func:`~daemon.config.declare.setting`).
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from daemon.config.checks import (
    at_least,
    log_level,
    non_negative,
    optional_http_url,
    positive,
    postgres_url,
)
from daemon.config.declare import setting
from daemon.config.values import choice, parse_decimal, parse_float, parse_int, parse_str


@attrs.frozen
class DatabaseConfig:
    """Where durable state lives."""

    url: str = setting(
        "postgresql:///driftd",
        parse_str,
        "PostgreSQL connection URL (libpq form). A password here is masked when printed.",
        check=postgres_url,
    )
    min_connections: int = setting(
        1, parse_int, "Smallest connection pool size.", check=at_least(1)
    )
    max_connections: int = setting(
        10, parse_int, "Largest connection pool size.", check=at_least(1)
    )
    command_timeout: float = setting(
        30.0, parse_float, "Seconds before a query is cancelled on the server.", check=positive
    )


@attrs.frozen
class HealthConfig:
    """The local health and control socket, and optional metrics listener."""

    socket: str = setting(
        "/run/driftd/driftd.sock", parse_str, "Unix socket for health, status and control."
    )
    metrics_listen: str = setting(
        "",
        parse_str,
        "host:port of a loopback HTTP listener serving Prometheus metrics; empty: off.",
    )


@attrs.frozen
class AlertsConfig:
    """Alert rules and where alerts go besides the log."""

    high_drift: Decimal = setting(
        Decimal("0.25"),
        parse_decimal,
        "HIGH_DRIFT fires when a portfolio's max drift exceeds this fraction.",
        check=positive,
        live=True,
    )
    gas_cost_factor: Decimal = setting(
        Decimal(2),
        parse_decimal,
        "HIGH_GAS_COST fires when a rebalance's gas cost exceeds this × the expected cost.",
        check=positive,
        live=True,
    )
    expected_gas_cost_usd: Decimal = setting(
        Decimal(0),
        parse_decimal,
        "Expected gas cost per rebalance in USD; 0: the median of recent rebalances.",
        check=non_negative,
        live=True,
    )
    webhook_url: str = setting(
        "",
        parse_str,
        "POST alerts as JSON (Slack-compatible 'text' plus fields) here; empty: log only.",
        check=optional_http_url,
        live=True,
    )
    repeat_window: float = setting(
        3600.0,
        parse_float,
        "Seconds during which a repeat of the same alert for the same portfolio is suppressed.",
        check=non_negative,
        live=True,
    )


@attrs.frozen
class SupervisorConfig:
    """Restart policy of portfolio actors."""

    backoff_initial: float = setting(
        1.0, parse_float, "Seconds before the first restart of a crashed actor.", check=positive
    )
    backoff_max: float = setting(
        300.0,
        parse_float,
        "Longest wait between restarts (exponential, with jitter).",
        check=positive,
    )
    max_restarts: int = setting(
        5,
        parse_int,
        "Restarts within restart_window after which an actor is parked.",
        check=positive,
    )
    restart_window: float = setting(
        600.0, parse_float, "Seconds over which restarts are counted.", check=positive
    )


@attrs.frozen
class LogConfig:
    """Logging to stdout (systemd's journal collects it)."""

    level: str = setting(
        "info", parse_str, "debug, info, warning or error.", check=log_level, live=True
    )
    format: str = setting(
        "auto",
        choice("auto", "json", "console"),
        "json: one JSON object per line. console: human-readable. auto: console on a terminal.",
    )


@attrs.frozen
class ReportConfig:
    """The history the daemon keeps for ``driftd report``, and how the report reads it."""

    valuation_interval: float = setting(
        300.0,
        parse_float,
        "Seconds between stored valuations of a portfolio (holdings, value, weights); one is "
        "also stored before and after every rebalance. They are what `driftd report` computes "
        "returns, drift over time and attribution from.",
        check=positive,
        live=True,
    )
    risk_free_rate: Decimal = setting(
        Decimal(0),
        parse_decimal,
        "Yearly risk-free rate (a fraction: 0.04 = 4 %) the report's Sharpe ratios are "
        "measured against.",
        check=non_negative,
        live=True,
    )
