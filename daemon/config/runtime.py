"""A running daemon's configuration: what a reload may change live, and the runtime parameters
the database overlays (``system_config.REBALANCING_PARAMS``, which has the last word over the
file and the environment)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from daemon.config.declare import is_live, parse_value
from daemon.config.errors import ConfigError
from daemon.config.keys import key_specs
from daemon.config.sections_trading import RebalanceConfig
from daemon.config.tree import CROSS_KEY_RULES, Config, section_types

_WHERE: Final = "system_config.REBALANCING_PARAMS"
RUNTIME_PARAM_ALIASES: Final = {
    # The seed's REBALANCING_PARAMS spelling → our [rebalance] key.
    "driftThreshold": "drift_threshold",
    "cooldownMinutes": "cooldown_minutes",
    "slippageTolerance": "slippage_tolerance",
    "maxTradeSizeUsd": "max_trade_usd",
    "minTradeSizeUsd": "min_trade_usd",
    "priceImpactThreshold": "price_impact_threshold",
}


def changed_keys(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Keys that differ between two configs, split into (live-applicable, restart-required)."""
    live: list[str] = []
    restart: list[str] = []
    for spec in key_specs():
        before = getattr(getattr(old, spec.section), spec.name)
        after = getattr(getattr(new, spec.section), spec.name)
        if before != after:
            (live if spec.live else restart).append(spec.dotted)
    if old.secrets != new.secrets:
        restart.append("secrets")
    return live, restart


def keep_restart_keys(running: Config, reloaded: Config) -> Config:
    """``reloaded`` with every key that needs a restart kept at its ``running`` value.

    A reload applies what can change live (thresholds, sizes, intervals…); connections, the
    signer and the like stay as the process started with until it is restarted.
    """
    sections: dict[str, Any] = {}
    for section_name, cls in section_types().items():
        new_section = getattr(reloaded, section_name)
        old_section = getattr(running, section_name)
        kept = {f.name: getattr(old_section, f.name) for f in attrs.fields(cls) if not is_live(f)}
        sections[section_name] = attrs.evolve(new_section, **kept)
    return attrs.evolve(reloaded, secrets=running.secrets, **sections)


def apply_runtime_params(config: Config, params: Any) -> Config:
    """Overlay ``system_config.REBALANCING_PARAMS`` (a JSON object of ``[rebalance]`` keys, or
    the seed's camelCase names) on ``config``; the database has the last word.

    Raises :class:`ConfigError` naming each bad key; nothing is applied then.
    """
    where = _WHERE
    if not isinstance(params, Mapping):
        raise ConfigError([f"{where}: must be a JSON object, got {type(params).__name__}"])
    fields = {f.name: f for f in attrs.fields(RebalanceConfig)}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for raw_key, raw in params.items():
        key = RUNTIME_PARAM_ALIASES.get(str(raw_key), str(raw_key))
        attribute = fields.get(key)
        if attribute is None:
            problems.append(f"{where}.{raw_key}: unknown rebalancing parameter")
            continue
        try:
            values[key] = parse_value(attribute, raw)
        except ValueError as exc:
            problems.append(f"{where}.{raw_key}: {exc}")
    rebalance = attrs.evolve(config.rebalance, **values)
    problems += [
        f"{where}: {rule.low} must be <= {rule.high}"
        for rule in CROSS_KEY_RULES
        if rule.section == "rebalance" and rule.violated(rebalance)
    ]
    if problems:
        raise ConfigError(problems)
    return attrs.evolve(config, rebalance=rebalance)
