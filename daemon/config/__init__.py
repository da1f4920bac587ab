"""Configuration: a frozen tree of attrs objects built from TOML, then the environment.

Precedence, lowest first: built-in defaults < the TOML file < environment variables (the seed's
names such as ``DRIFT_THRESHOLD`` and ``DRIFTD_SECTION_KEY`` for every key) < the runtime
parameters stored in the database (``system_config.REBALANCING_PARAMS``, applied by the daemon
through :func:`apply_runtime_params`).

The schema is the single source of every key's default, limits, environment variables and
documentation; the reference tables are generated from it (:mod:`daemon.configdoc`), and code
that needs a default reads it from there (``Config()``), never writes it again.

Secrets (the signer key, the CoinGecko API key) never come from the TOML file: only from a file
named in it (``*_file`` keys), from ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) or
from the environment. They are held in :class:`Secret`, whose ``repr``/``str`` are masked.

One concept per module; import from ``daemon.config`` itself:

- ``values`` and ``checks``: parsers of raw values and the limits keys are held to;
- ``declare``: how a key is declared (:func:`setting`) and reads a value;
- ``sections_chain``, ``sections_trading``, ``sections_service``: the schema, section by section;
- ``tree``: :class:`Config`, the whole tree, and the rules across keys;
- ``keys``: every key as declared (:func:`key_specs`) and its environment variable;
- ``secret``: :class:`Secret` and where secrets are read from;
- ``loading``: the file and the environment → a validated :class:`Config`;
- ``runtime``: reloads (:func:`changed_keys`, :func:`keep_restart_keys`) and the database's
  runtime parameters;
- ``effective``: the configuration as printed, masked;
- ``masking``: :func:`mask_url`, the one masking function of every output.
"""

from daemon.config.checks import Check
from daemon.config.declare import setting
from daemon.config.effective import effective_config
from daemon.config.errors import ConfigError
from daemon.config.keys import ENV_PREFIX, KeySpec, key_specs
from daemon.config.loading import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_PATH,
    NON_KEY_ENV,
    load_config,
    parse_config,
    resolve_config_path,
)
from daemon.config.masking import MASK, looks_like_key, mask_url
from daemon.config.runtime import (
    RUNTIME_PARAM_ALIASES,
    apply_runtime_params,
    changed_keys,
    keep_restart_keys,
)
from daemon.config.secret import (
    COINGECKO_CREDENTIAL,
    COINGECKO_KEY_ENV,
    SIGNER_CREDENTIAL,
    SIGNER_KEY_ENV,
    Secret,
    Secrets,
    private_key_bytes,
)
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
from daemon.config.tree import Config
from daemon.config.values import INT_LIMIT, NUMBER_LIMIT, Parser

__all__ = [
    "COINGECKO_CREDENTIAL",
    "COINGECKO_KEY_ENV",
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "INT_LIMIT",
    "MASK",
    "NON_KEY_ENV",
    "NUMBER_LIMIT",
    "RUNTIME_PARAM_ALIASES",
    "SIGNER_CREDENTIAL",
    "SIGNER_KEY_ENV",
    "AlertsConfig",
    "ChainConfig",
    "Check",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DelegationConfig",
    "ExecutionConfig",
    "GuardConfig",
    "HealthConfig",
    "KeySpec",
    "LogConfig",
    "Parser",
    "PricesConfig",
    "RebalanceConfig",
    "ReportConfig",
    "Secret",
    "Secrets",
    "SignerConfig",
    "SupervisorConfig",
    "apply_runtime_params",
    "changed_keys",
    "effective_config",
    "keep_restart_keys",
    "key_specs",
    "load_config",
    "looks_like_key",
    "mask_url",
    "parse_config",
    "private_key_bytes",
    "resolve_config_path",
    "setting",
]
