"""Actor settings are derived from the configuration, keeping its names (issue 13, item 4).

The configuration schema is the one source of defaults: the settings classes declare none, and
each field takes the value of the configuration key of the same name. Every key here is set to
a value of its own (none equal to its default, none equal to another), so a field read from the
wrong key, or a default of the class's own, fails.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import pytest
from schema_defaults import config

from daemon.alerts import AlertSettings
from daemon.drift import EngineParams
from daemon.executor_settings import ExecutorSettings
from daemon.portfolio import RuntimeParams
from daemon.prices import FeedSettings
from daemon.supervise import RestartPolicy
from daemon.transactions_values import LifecycleSettings

CONFIG = config(
    rebalance={
        "drift_threshold": Decimal("0.11"),
        "cooldown_minutes": Decimal(7),
        "slippage_tolerance": Decimal("0.013"),
        "max_trade_usd": Decimal(4321),
        "min_trade_usd": Decimal(12),
        "price_impact_threshold": Decimal("0.042"),
        "max_quote_deviation": Decimal("0.021"),
        "rebalance_to": "band",
        "band_fraction": Decimal("0.3"),
    },
    execution={
        "dry_run": True,
        "deadline_seconds": 77,
        "gas_price_symbol": "WNATIVE",
        "stuck_after": 333.0,
        "max_fee_gwei": Decimal(42),
        "fee_bump": Decimal("0.2"),
        "receipt_timeout": 55.0,
        "poll_interval": 0.7,
    },
    prices={
        "poll_interval": 9.0,
        "max_divergence": Decimal("0.07"),
        "max_age": 99.0,
        "max_head_age": 44.0,
        "max_price_usd": Decimal(5_000_000),
        "max_move_factor": Decimal(4),
    },
    report={"valuation_interval": 61.0},
    alerts={
        "high_drift": Decimal("0.4"),
        "gas_cost_factor": Decimal(3),
        "expected_gas_cost_usd": Decimal("1.5"),
        "webhook_url": "http://127.0.0.1:9/hook",
        "repeat_window": 120.0,
    },
    supervisor={
        "backoff_initial": 0.5,
        "backoff_max": 60.0,
        "max_restarts": 9,
        "restart_window": 90.0,
    },
)

SECTIONS: dict[type[Any], tuple[str, ...]] = {
    EngineParams: ("rebalance",),
    FeedSettings: ("prices",),
    RestartPolicy: ("supervisor",),
    AlertSettings: ("alerts",),
    ExecutorSettings: ("rebalance", "execution", "alerts", "prices"),
}
"""Where each class's fields come from: the key of the same name in one of these sections."""


@pytest.mark.parametrize("settings_class", list(SECTIONS), ids=lambda c: c.__name__)
def test_each_field_is_the_configuration_key_of_the_same_name(settings_class: Any) -> None:
    settings = settings_class.from_config(CONFIG)
    for field in attrs.fields(settings_class):
        if field.name == "lifecycle":
            continue  # below
        assert field.default is attrs.NOTHING, f"{field.name}: a default of its own"
        sources = [
            getattr(CONFIG, section)
            for section in SECTIONS[settings_class]
            if hasattr(getattr(CONFIG, section), field.name)
        ]
        assert len(sources) == 1, f"{field.name}: not one key of that name"
        assert getattr(settings, field.name) == getattr(sources[0], field.name), field.name


def test_the_executor_settings_carry_the_lifecycles_from_execution() -> None:
    assert ExecutorSettings.from_config(CONFIG).lifecycle == LifecycleSettings(
        max_fee_per_gas=42 * 10**9,
        fee_bump=Decimal("0.2"),
        receipt_timeout=55.0,
        poll_interval=0.7,
    )


def test_an_evaluation_reads_rebalance_prices_and_alerts() -> None:
    params = RuntimeParams.from_config(CONFIG)
    assert params == RuntimeParams(
        engine=EngineParams.from_config(CONFIG),
        cooldown_minutes=Decimal(7),
        max_age=99.0,
        high_drift=Decimal("0.4"),
        valuation_interval=61.0,
    )
