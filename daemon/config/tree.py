"""The whole configuration: one frozen tree of the schema's sections, the secrets, and the
rules that relate keys of one section (``min_trade_usd <= max_trade_usd``, …)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from daemon.config.secret import Secrets
from daemon.config.sections_chain import ChainConfig, DelegationConfig, GuardConfig, SignerConfig
from daemon.config.sections_service import (
    AlertsConfig,
    DatabaseConfig,
    HealthConfig,
    LogConfig,
    ReportConfig,
    SupervisorConfig,
)
from daemon.config.sections_trading import ExecutionConfig, PricesConfig, RebalanceConfig


@attrs.frozen
class Config:
    """The whole effective configuration."""

    database: DatabaseConfig = attrs.field(factory=DatabaseConfig)
    chain: ChainConfig = attrs.field(factory=ChainConfig)
    signer: SignerConfig = attrs.field(factory=SignerConfig)
    execution: ExecutionConfig = attrs.field(factory=ExecutionConfig)
    rebalance: RebalanceConfig = attrs.field(factory=RebalanceConfig)
    prices: PricesConfig = attrs.field(factory=PricesConfig)
    delegation: DelegationConfig = attrs.field(factory=DelegationConfig)
    guard: GuardConfig = attrs.field(factory=GuardConfig)
    health: HealthConfig = attrs.field(factory=HealthConfig)
    alerts: AlertsConfig = attrs.field(factory=AlertsConfig)
    supervisor: SupervisorConfig = attrs.field(factory=SupervisorConfig)
    log: LogConfig = attrs.field(factory=LogConfig)
    report: ReportConfig = attrs.field(factory=ReportConfig)
    secrets: Secrets = attrs.field(default=Secrets(), metadata={"not_a_section": True})
    source: str = attrs.field(default="", metadata={"not_a_section": True})
    """Where the file part came from ("" when from the environment alone)."""


def section_types() -> dict[str, type[Any]]:
    """Section name → its attrs class, in declaration order."""
    # attrs resolves string annotations lazily; with `from __future__ import annotations` the
    # field types are strings, so map them through this module's namespace.
    resolved = attrs.resolve_types(Config)
    return {
        f.name: f.type
        for f in attrs.fields(resolved)
        if not f.metadata.get("not_a_section") and isinstance(f.type, type)
    }


@attrs.frozen
class OrderedKeys:
    """A rule across two keys of one section: ``low`` may not exceed ``high``."""

    section: str
    low: str
    high: str
    show_values: bool = False
    """Whether the problem shows the two values."""

    def violated(self, section: Any) -> bool:
        return bool(getattr(section, self.low) > getattr(section, self.high))

    def problem(self, section: Any) -> str:
        """The problem as reported for the configuration (file and environment)."""
        text = f"{self.section}.{self.low}: must be <= {self.section}.{self.high}"
        if self.show_values:
            text += f" ({getattr(section, self.low)} > {getattr(section, self.high)})"
        return text


CROSS_KEY_RULES: Final = (
    OrderedKeys("rebalance", "min_trade_usd", "max_trade_usd", show_values=True),
    OrderedKeys("database", "min_connections", "max_connections"),
    OrderedKeys("supervisor", "backoff_initial", "backoff_max"),
)


def cross_key_problems(sections: Mapping[str, Any]) -> list[str]:
    """What breaks a :data:`CROSS_KEY_RULES` rule among the sections built (by name)."""
    return [
        rule.problem(sections[rule.section])
        for rule in CROSS_KEY_RULES
        if rule.section in sections and rule.violated(sections[rule.section])
    ]
