# ruff: noqa: B018 - a vulture whitelist is made of expressions that name what is used
"""Names vulture cannot see used (read by a protocol, a library or by name). See pyproject's
[tool.vulture]; every entry says why it stays."""

from vulture.whitelist_utils import Whitelist

from daemon import config, drift

_ = Whitelist()

# __aexit__ / __exit__ parameters, and test callbacks' parameters: their protocols pass them.
_.exc_type
_.traceback
_.tb
_.cfg

# Stock enforcer addresses an operator's configuration may name ([delegation] limited_calls,
# redeemer): accepted so configs that set them stay valid; driftd's delegations do not use them.
config.DelegationConfig.limited_calls
config.DelegationConfig.redeemer

# Part of the decision record (health's per-token view, and every caller that explains a drift).
drift.TokenDrift.target_weight

# Set for a library to read: rich.table.Table.caption; http.server's class attributes.
_.caption
_.protocol_version
_.daemon_threads

# The backtest's figures are read by name (attrs.asdict for JSON, the table's column list).
_.initial_value_usd
_.final_value_usd
_.mean_drift_pct
_.max_drift_pct
_.volatility_pct

# Trio calls an instrument's hooks by name.
_.task_spawned
