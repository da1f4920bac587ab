"""Configuration: a frozen tree of attrs objects built from TOML, then the environment.

Precedence, lowest first: built-in defaults < the TOML file < environment variables (the seed's
names such as ``DRIFT_THRESHOLD`` and ``DRIFTD_SECTION_KEY`` for every key) < the runtime
parameters stored in the database (``system_config.REBALANCING_PARAMS``, applied by the daemon,
not here).

Why a schema table instead of reading dicts: every key is declared once, with its type, default,
check and documentation, so that unknown keys (typos) are errors, every error names the key, and
``config.toml.example`` and the README reference can be checked against the code.

Secrets (the signer key, the CoinGecko API key) never come from the TOML file: only from a file
named in it (``*_file`` keys), from ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) or
from the environment. They are held in :class:`Secret`, whose ``repr``/``str`` are masked.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import attrs

from daemon.address import checked_address

DEFAULT_CONFIG_PATH: Final = Path("/etc/driftd/config.toml")
ENV_CONFIG_PATH: Final = "DRIFTD_CONFIG"
ENV_PREFIX: Final = "DRIFTD_"
# DRIFTD_* variables that are not configuration keys.
NON_KEY_ENV: Final = frozenset(
    {"DRIFTD_CONFIG", "DRIFTD_SIGNER_KEY", "DRIFTD_COINGECKO_API_KEY", "DRIFTD_TEST_FAULTS"}
)
SIGNER_KEY_ENV: Final = "DRIFTD_SIGNER_KEY"
COINGECKO_KEY_ENV: Final = "DRIFTD_COINGECKO_API_KEY"
SIGNER_CREDENTIAL: Final = "signer-key"
COINGECKO_CREDENTIAL: Final = "coingecko-api-key"

# user:password@ (a port followed by a path is not a password).
_URL_PASSWORD_RE: Final = re.compile(r"(?<=://)([^:/@]+):(?!\d*[/?#])([^@]*)@")
MASK: Final = "***"
"""What a masked credential is shown as."""
# A URL inside free text: it ends at whitespace, a quote or an angle bracket.
_URL_IN_TEXT_RE: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]*", re.IGNORECASE)
# Runs of the characters API keys and webhook tokens are made of (within a path segment).
_KEY_RUN_RE: Final = re.compile(r"[A-Za-z0-9_~-]{16,}")
# Path segments after which every segment is a credential: webhook URLs (Slack
# /services/T…/B…/<token>, Discord /api/webhooks/<id>/<token>, generic …/hooks/<token>) and
# …/key/<key> styles.
_SECRET_PATH_MARKERS: Final = frozenset(
    {"services", "webhook", "webhooks", "hook", "hooks", "token", "tokens", "key", "keys"}
    | {"apikey", "api_key", "api-key", "secret", "secrets"}
)
# Query parameters whose values are shown (libpq's harmless connection options); every other
# query value is masked.
_SHOWN_QUERY_NAMES: Final = frozenset(
    {"sslmode", "connect_timeout", "application_name", "target_session_attrs", "dbname"}
)
_SECP256K1_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_KEY_FILE_FORBIDDEN_MODE: Final = 0o077


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` lists each as ``section.key: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@attrs.frozen(repr=False)
class Secret:
    """A secret value (private key, API key). Never printed, logged or stored."""

    value: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def reveal(self) -> str:
        """The secret itself; call only where it is used (signing, an HTTP header)."""
        return self.value


def mask_url(text: str, *, hide_path: bool = False) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    The one masking function: configuration output, health and status documents, log lines and
    error texts all go through it. It masks a URL's password (``user:***@host``) and a lone
    user name that looks like a key, path segments that look like keys (Alchemy ``/v2/<key>``,
    Infura ``/v3/<32 hex>``: a run of 16+ letters and digits, or of 32+ key characters) and
    every segment after a webhook/key marker (Slack ``/services/…``, Discord
    ``/api/webhooks/…``, ``/hooks/…``), every query value except libpq's harmless options
    (``?apikey=***``), and the fragment. ``hide_path`` masks the whole path, query and fragment
    (``scheme://host/***``): for URLs that are secrets as a whole, such as webhook URLs.
    """
    if "://" not in text:
        return text
    # Passwords first, over the whole text: one that holds a space or a quote is still masked.
    text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return _URL_IN_TEXT_RE.sub(lambda m: _mask_one_url(m.group(), hide_path), text)


def looks_like_key(token: str) -> bool:
    """A credential-looking string: 32+ characters, or 16+ mixing letters and digits."""
    if len(token) >= 32:
        return True
    return len(token) >= 16 and any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _first_of(text: str, characters: str, start: int = 0) -> int:
    """Index of the first of ``characters`` in ``text`` at or after ``start``, else its length."""
    found = [i for i in (text.find(c, start) for c in characters) if i >= 0]
    return min(found, default=len(text))


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``user:password@host/…`` (the part after ``://``) → (``user:password``, ``host/…``)."""
    first_at = rest.find("@")
    if first_at < 0:
        return None, rest
    stop = _first_of(rest, ":/?#@")
    if rest[stop] == "@":
        return rest[:stop], rest[stop + 1 :]
    if rest[stop] != ":":
        return None, rest  # the '@' is in the path or the query
    after_colon = rest[stop + 1 :]
    delimiter = _first_of(after_colon, "/?#@")
    port_like = after_colon[:delimiter].isdigit() or delimiter == 0
    if port_like and after_colon[delimiter : delimiter + 1] in {"/", "?", "#"}:
        return None, rest  # host:port/…, the '@' is further on
    # A password may hold unescaped '@' or '/': the user info ends at the last '@' before the
    # host's end.
    host_end = _first_of(rest, "/?#", first_at)
    last_at = rest.rfind("@", 0, host_end)
    return rest[:last_at], rest[last_at + 1 :]


def _mask_userinfo(info: str) -> str:
    user, colon, password = info.partition(":")
    user = MASK if looks_like_key(user) else user
    if colon:
        return f"{user}:{MASK}" if password else f"{user}:"
    return user


def _mask_path(path: str) -> str:
    segments = []
    hide = False
    for segment in path.split("/"):
        if hide and segment:
            segments.append(MASK)
            continue
        segments.append(
            _KEY_RUN_RE.sub(lambda m: MASK if looks_like_key(m.group()) else m.group(), segment)
        )
        hide = hide or segment.lower() in _SECRET_PATH_MARKERS
    return "/".join(segments)


def _mask_query(query: str) -> str:
    items: list[str] = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if not equals:
            items.append(MASK if item else item)
        elif value and name.lower() not in _SHOWN_QUERY_NAMES:
            items.append(f"{name}={MASK}")
        else:
            items.append(item)
    return "&".join(items)


def _mask_one_url(url: str, hide_path: bool) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, rest = _split_userinfo(rest)
    host_end = _first_of(rest, "/?#")
    host, tail = rest[:host_end], rest[host_end:]
    shown = f"{scheme}://" + ("" if userinfo is None else _mask_userinfo(userinfo) + "@") + host
    if hide_path:
        return shown + (f"/{MASK}" if tail.strip("/") else tail)
    tail, hash_sign, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    return (
        shown
        + _mask_path(path)
        + (question_mark + _mask_query(query))
        + (hash_sign + (MASK if fragment else ""))
    )


# --- value parsers: raw TOML or environment value → typed value, or ValueError with a reason ---

Parser = Callable[[Any], Any]


NUMBER_LIMIT: Final = 10**9
"""Largest magnitude of a decimal or float setting. None needs more (durations are at most ~31
years in seconds or ~1 900 years in minutes, amounts a billion USD or gwei), and the bound keeps
every use of them finite: ``1e999`` is a finite Decimal but ``inf`` as a float, and a huge
duration overflows the datetime arithmetic of cooldowns and deadlines."""
INT_LIMIT: Final = 2**63 - 1
"""Largest magnitude of an integer setting: PostgreSQL's bigint and int64 (chain ids are stored
as bigint; ids of real chains reach ~10^13)."""
_INT_TEXT_LIMIT: Final = 100
"""Longest integer text considered at all (Python refuses > 4 300 digits with an odd message)."""


def _shown(raw: Any) -> str:
    """``raw`` for an error message: short, and never a 5 000-digit number."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 64:
        return f"an integer of {raw.bit_length()} bits"
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:40] + "…") if len(text) > 40 else repr(raw)


def _decimal(raw: Any) -> Decimal:
    """A finite number of magnitude at most :data:`NUMBER_LIMIT` (``inf``, ``nan`` and ``1e999``
    are refused, from the file and the environment alike)."""
    if isinstance(raw, bool):
        raise ValueError(f"must be a number, got {raw!r}")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, float):
        # Only code passes floats (TOML floats arrive as Decimal); repr is the shortest exact text.
        value = Decimal(repr(raw))
    elif isinstance(raw, int):
        if abs(raw) > NUMBER_LIMIT:
            raise ValueError(f"must be at most {NUMBER_LIMIT} in magnitude, got {_shown(raw)}")
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise ValueError(f"must be a number, got {_shown(raw)}") from None
    else:
        raise ValueError(f"must be a number, got {_shown(raw)}")
    if not value.is_finite():
        raise ValueError(f"must be a finite number, got {_shown(raw)}")
    if abs(value) > NUMBER_LIMIT:
        raise ValueError(f"must be at most {NUMBER_LIMIT} in magnitude, got {_shown(raw)}")
    return value


def _float(raw: Any) -> float:
    """A finite float (seconds, mostly): :func:`_decimal`'s rules, then converted."""
    value = float(_decimal(raw))
    if not math.isfinite(value):  # pragma: no cover - _decimal's bound already excludes it
        raise ValueError(f"must be a finite number, got {_shown(raw)}")
    return value


def _int(raw: Any) -> int:
    """An integer of magnitude at most :data:`INT_LIMIT` (decimal, ``0x`` hex, ``1_000``)."""
    if isinstance(raw, bool):
        raise ValueError(f"must be an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and len(raw.strip()) > _INT_TEXT_LIMIT:
        raise ValueError(f"must be at most {INT_LIMIT} in magnitude, got {_shown(raw)}")
    elif isinstance(raw, str):
        try:
            value = int(raw.strip(), 0)
        except ValueError:
            raise ValueError(f"must be an integer, got {_shown(raw)}") from None
    else:
        raise ValueError(f"must be an integer, got {_shown(raw)}")
    if abs(value) > INT_LIMIT:
        raise ValueError(f"must be at most {INT_LIMIT} in magnitude, got {_shown(raw)}")
    return value


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {raw!r}")
    return raw


def _choice(*choices: str) -> Parser:
    def parse(raw: Any) -> str:
        value = _str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _address(raw: Any) -> str:
    # Checksum casing is normalised here so comparisons elsewhere are plain string equality.
    return checked_address(_str(raw))


def _optional_address(raw: Any) -> str:
    return "" if _str(raw).strip() == "" else _address(raw)


# --- checks on parsed values: return a problem or None ---

Check = Callable[[Any], str | None]


def _open_unit(value: Decimal) -> str | None:
    return None if 0 < value < 1 else f"must be in (0, 1), got {value}"


def _half_open_unit(value: Decimal) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def _positive(value: Decimal | float | int) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _non_negative(value: Decimal | float | int) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def _basis_points(value: int) -> str | None:
    return None if 0 < value <= 10_000 else f"must be in 1..10000, got {value}"


def _at_least(minimum: Decimal | float | int) -> Check:
    def check(value: Decimal | float | int) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def _http_url(value: str) -> str | None:
    if re.match(r"^https?://\S+$", value):
        return None
    # Echoed masked: a mistyped URL still carries its API key.
    shown = _KEY_RUN_RE.sub(lambda m: MASK if looks_like_key(m.group()) else m.group(), value)
    return f"must be an http(s) URL, got {mask_url(shown)!r}"


def _optional_http_url(value: str) -> str | None:
    """An http(s) URL that is a secret as a whole (a webhook), or empty."""
    if value == "" or re.match(r"^https?://\S+$", value):
        return None
    if "://" in value:
        return f"must be an http(s) URL, got {mask_url(value, hide_path=True)!r}"
    return "must be an http(s) URL (https://…; the value is not shown, it may hold a token)"


def _postgres_url(value: str) -> str | None:
    if re.match(r"^postgres(ql)?://", value):
        return None
    return f"must be a postgresql:// URL, got {mask_url(value)!r}"


def _log_level(value: str) -> str | None:
    levels = {"debug", "info", "warning", "error", "critical"}
    return None if value in levels else f"must be one of {', '.join(sorted(levels))}, got {value!r}"


def setting(
    default: Any,
    parse: Parser,
    doc: str,
    *,
    check: Check | None = None,
    env: tuple[str, ...] = (),
    env_parse: Parser | None = None,
    live: bool = False,
) -> Any:
    """Declare one configuration key.

    ``env`` lists the seed's aliases (``DRIFTD_SECTION_KEY`` always works too), ``env_parse``
    reads an alias whose spelling differs (``PRICE_SOURCE=ORACLE``), and ``live`` marks keys
    that SIGHUP applies to running actors without a restart.
    """
    return attrs.field(
        default=default,
        metadata={
            "parse": parse,
            "doc": doc,
            "check": check,
            "env": env,
            "env_parse": env_parse,
            "live": live,
        },
    )


@attrs.frozen
class DatabaseConfig:
    """Where durable state lives."""

    url: str = setting(
        "postgresql:///driftd",
        _str,
        "PostgreSQL connection URL (libpq form). A password here is masked when printed.",
        check=_postgres_url,
    )
    min_connections: int = setting(1, _int, "Smallest connection pool size.", check=_at_least(1))
    max_connections: int = setting(10, _int, "Largest connection pool size.", check=_at_least(1))
    command_timeout: float = setting(
        30.0, _float, "Seconds before a query is cancelled on the server.", check=_positive
    )


@attrs.frozen
class ChainConfig:
    """The EVM chain and the DEX driftd trades on."""

    rpc_url: str = setting(
        "http://127.0.0.1:8545", _str, "JSON-RPC endpoint (http or https).", check=_http_url
    )
    chain_id: int = setting(
        1, _int, "Expected chain id; checked against the node at start.", check=_positive
    )
    router: str = setting(
        "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D",
        _address,
        "Uniswap V2 router (Router02) address. Default: Ethereum mainnet's.",
        env=("UNISWAP_V2_ROUTER",),
    )
    request_timeout: float = setting(
        10.0, _float, "Seconds to wait for one JSON-RPC response.", check=_positive
    )
    max_retries: int = setting(
        4, _int, "Retries of a transient RPC failure before it is reported.", check=_non_negative
    )
    max_batch_calls: int = setting(
        500,
        _int,
        "Most eth_calls in one JSON-RPC batch (portfolios' balance reads are coalesced into "
        "batches; some hosted nodes accept fewer).",
        check=_at_least(1),
    )


@attrs.frozen
class SignerConfig:
    """The daemon's signing key: the delegate of every portfolio's delegation."""

    key_file: str = setting(
        "",
        _str,
        "File holding the hex private key. Else $CREDENTIALS_DIRECTORY/signer-key (systemd "
        "LoadCredential=), else the DRIFTD_SIGNER_KEY environment variable.",
    )


@attrs.frozen
class ExecutionConfig:
    """How trades reach the chain."""

    mode: str = setting(
        "delegation",
        _choice("delegation", "wallet"),
        "delegation: redeem the owner's delegation on their smart account (ERC-7710). "
        "wallet: the signer's own address holds the funds and swaps directly.",
    )
    dry_run: bool = setting(
        False, _bool, "Plan and quote but send nothing (rows with status DRY_RUN).", live=True
    )
    receipt_timeout: float = setting(
        120.0,
        _float,
        "Seconds to wait for a receipt before the transaction is replaced with higher fees.",
        check=_positive,
        live=True,
    )
    fee_bump: Decimal = setting(
        Decimal("0.125"),
        _decimal,
        "Fractional fee increase of a replacement transaction (nodes require >= 0.125).",
        check=_at_least(Decimal("0.125")),
        live=True,
    )
    max_fee_gwei: Decimal = setting(
        Decimal(500),
        _decimal,
        "Ceiling on maxFeePerGas, in gwei; a replacement never bids above it.",
        check=_positive,
        live=True,
    )
    deadline_seconds: int = setting(
        300, _int, "Swap deadline, in seconds after the latest block's timestamp.", check=_positive
    )
    shutdown_grace: float = setting(
        30.0,
        _float,
        "On SIGTERM, seconds to let an in-flight transaction reach its receipt before stopping "
        "(it is recorded either way; the next start settles it).",
        check=_non_negative,
        live=True,
    )
    gas_price_symbol: str = setting(
        "WETH",
        _str,
        "Registered token whose USD price values gas costs (the chain's wrapped native token).",
        live=True,
    )
    max_in_flight: int = setting(
        4,
        _int,
        "Rebalances the executor carries out at once (consecutive nonces of the one signer, "
        "receipts awaited concurrently).",
        check=_positive,
    )
    poll_interval: float = setting(
        1.0,
        _float,
        "Seconds between checks of an unsettled transaction (receipt, nonce, pool).",
        check=_positive,
        live=True,
    )
    stuck_after: float = setting(
        900.0,
        _float,
        "Seconds a transaction may stay unsettled before health turns degraded and TX_STUCK "
        "is alerted.",
        check=_positive,
        live=True,
    )
    failure_backoff: float = setting(
        60.0,
        _float,
        "Seconds a portfolio waits after a FAILED attempt before trying again; doubled after "
        "each further failure, up to failure_backoff_max.",
        check=_non_negative,
        live=True,
    )
    failure_backoff_max: float = setting(
        3600.0,
        _float,
        "Longest wait after repeated FAILED attempts of one portfolio.",
        check=_non_negative,
        live=True,
    )


@attrs.frozen
class RebalanceConfig:
    """When to trade and how much (the engine's parameters)."""

    drift_threshold: Decimal = setting(
        Decimal("0.15"),
        _decimal,
        "Rebalance when the largest |drift| of a tradable token reaches this fraction.",
        check=_open_unit,
        env=("DRIFT_THRESHOLD",),
        live=True,
    )
    cooldown_minutes: Decimal = setting(
        Decimal(15),
        _decimal,
        "Minutes after a successful rebalance before a portfolio may trade again.",
        check=_non_negative,
        env=("COOLDOWN_MINUTES",),
        live=True,
    )
    slippage_tolerance: Decimal = setting(
        Decimal("0.01"),
        _decimal,
        "amountOutMin = fresh on-chain quote × (1 − this).",
        check=_open_unit,
        env=("SLIPPAGE_TOLERANCE",),
        live=True,
    )
    max_trade_usd: Decimal = setting(
        Decimal(10000),
        _decimal,
        "Largest USD size of one leg; larger legs are capped to it, not skipped.",
        check=_positive,
        env=("MAX_TRADE_SIZE_USD",),
        live=True,
    )
    min_trade_usd: Decimal = setting(
        Decimal(50),
        _decimal,
        "Legs smaller than this many USD are dropped (dust).",
        check=_non_negative,
        env=("MIN_TRADE_SIZE_USD",),
        live=True,
    )
    price_impact_threshold: Decimal = setting(
        Decimal("0.05"),
        _decimal,
        "A leg whose price impact on the pool exceeds this fraction is not sent.",
        check=_open_unit,
        env=("PRICE_IMPACT_THRESHOLD",),
        live=True,
    )
    max_quote_deviation: Decimal = setting(
        Decimal("0.03"),
        _decimal,
        "A leg is not sent when the pool's mid price differs from the price the plan was made "
        "with by more than this fraction (either way): a pool pushed off-market, or stale or "
        "wrong plan prices. Fees and impact are bounded separately.",
        check=_open_unit,
        live=True,
    )
    rebalance_to: str = setting(
        "target",
        _choice("target", "band"),
        "target: trade back to the target weights. band: only back to within "
        "band_fraction × drift_threshold of target (less turnover).",
        live=True,
    )
    band_fraction: Decimal = setting(
        Decimal("0.5"),
        _decimal,
        "With rebalance_to = band: the band's half-width as a fraction of drift_threshold.",
        check=_half_open_unit,
        live=True,
    )


def _price_source_alias(raw: Any) -> str:
    # The seed spells the source ORACLE / ROUTER.
    return str(_choice("oracle", "router")(raw))


def _greater_than_one(value: Decimal) -> str | None:
    return None if value > 1 else f"must be > 1, got {value}"


@attrs.frozen
class PricesConfig:
    """Where USD prices come from and when they are too old to trade on."""

    source: str = setting(
        "router",
        _choice("oracle", "router"),
        "oracle: CoinGecko's HTTP API. router: spot prices on the Uniswap V2 router, in the "
        "quote token.",
        env=("PRICE_SOURCE",),
        env_parse=_price_source_alias,
    )
    poll_interval: float = setting(
        30.0, _float, "Seconds between price polls.", check=_positive, live=True
    )
    max_age: float = setting(
        300.0,
        _float,
        "A price older than this many seconds is stale: no trade on it.",
        check=_positive,
        live=True,
    )
    cross_check: bool = setting(
        False,
        _bool,
        "Also fetch the other source: a token whose two prices differ by more than "
        "max_divergence is DIVERGED, one it cannot price (no price, an invalid or stale one, "
        "the source down) is UNVERIFIED; neither is traded. Needs every token's coingecko_id.",
    )
    max_divergence: Decimal = setting(
        Decimal("0.05"),
        _decimal,
        "With cross_check: largest tolerated |oracle − router| / router before a token is "
        "unhealthy.",
        check=_open_unit,
        live=True,
    )
    max_head_age: float = setting(
        120.0,
        _float,
        "Router prices read at a block whose timestamp is older than this many seconds are "
        "stale: no trade on them (a node stuck on an old head serves old reserves as current). "
        "Ten 12-second blocks by default; raise it on a chain with slower blocks. 0: not judged "
        "(a devnet that mines no blocks while idle).",
        check=_non_negative,
        live=True,
    )
    max_price_usd: Decimal = setting(
        Decimal(1_000_000_000),
        _decimal,
        "A price above this many USD per whole token is refused as garbage (logged as "
        "price_refused; portfolios holding the token skip).",
        check=_positive,
        live=True,
    )
    max_move_factor: Decimal = setting(
        Decimal(10),
        _decimal,
        "A price more than this many times above or below the token's last accepted price is "
        "refused (logged as price_refused; portfolios holding the token skip) until it is back "
        "within the factor. Raise it to accept a real move.",
        check=_greater_than_one,
        live=True,
    )
    coingecko_base_url: str = setting(
        "https://api.coingecko.com/api/v3",
        _str,
        "CoinGecko API base URL (pro: https://pro-api.coingecko.com/api/v3).",
        check=_http_url,
    )
    coingecko_plan: str = setting(
        "demo",
        _choice("demo", "pro"),
        "Which API-key header to send: x-cg-demo-api-key or x-cg-pro-api-key.",
    )
    coingecko_api_key_file: str = setting(
        "",
        _str,
        "File holding the CoinGecko API key. Else $CREDENTIALS_DIRECTORY/coingecko-api-key, "
        "else DRIFTD_COINGECKO_API_KEY. Optional on the public API.",
    )


_CANONICAL_V1_3_0: Final = {
    # MetaMask Delegation Framework v1.3.0: the same CREATE2 addresses on every chain it is on
    # (npm @metamask/delegation-deployments).
    "manager": "0xdb9B1e94B5b69Df7e401DDbedE43491141047dB3",
    "allowed_targets": "0x7F20f61b1f09b08D970938F6fa563634d65c4EeB",
    "allowed_methods": "0x2c21fD0Cb9DC8445CB3fb0DC5E7Bb0Aca01842B5",
    "allowed_calldata": "0xc2b0d624c1c4319760C96503BA27C347F3260f55",
    "limited_calls": "0x04658B29F6b82ed55274221a06Fc97D318E25416",
    "redeemer": "0xE144b0b2618071B4E56f746313528a669c7E65c5",
    "timestamp": "0x1046bb45C8d673d4ea75321280DB34899413c069",
    "value_lte": "0x92Bf12322527cAA612fd31a0e810472BBB106A8F",
    "nonce": "0xDE4f2FAC4B3D87A1d9953Ca5FC09FCa7F366254f",
}


def _enforcer(name: str, doc: str) -> Any:
    return setting(_CANONICAL_V1_3_0[name], _address, doc)


@attrs.frozen
class DelegationConfig:
    """Delegation Framework contracts (defaults: canonical v1.3.0; override on a devnet)."""

    manager: str = _enforcer("manager", "DelegationManager address.")
    allowed_targets: str = _enforcer("allowed_targets", "AllowedTargetsEnforcer address.")
    allowed_methods: str = _enforcer("allowed_methods", "AllowedMethodsEnforcer address.")
    allowed_calldata: str = _enforcer("allowed_calldata", "AllowedCalldataEnforcer address.")
    limited_calls: str = _enforcer("limited_calls", "LimitedCallsEnforcer address.")
    redeemer: str = _enforcer("redeemer", "RedeemerEnforcer address.")
    timestamp: str = _enforcer("timestamp", "TimestampEnforcer address.")
    value_lte: str = _enforcer("value_lte", "ValueLteEnforcer address.")
    nonce: str = _enforcer(
        "nonce",
        "NonceEnforcer address (one-step revocation: the owner's smart account calls "
        "incrementNonce(manager) and every delegation signed at the old nonce stops working).",
    )


@attrs.frozen
class GuardConfig:
    """The oracle guard (DriftGuardEnforcer) on the swap delegation, and the caveats around it.

    ``delegation build`` writes these bounds into the delegations; ``delegation verify`` and
    ``portfolio add`` refuse delegations whose bounds are weaker. Each token's USD feed is
    registered with it (``driftd token add … --feed 0xFEED``).
    """

    enforcer: str = setting(
        "",
        _optional_address,
        "DriftGuardEnforcer address: `driftd guard address` prints it (one CREATE2 address per "
        "source on every chain), `driftd guard deploy` deploys it; the devnet sets its own. "
        "Empty: delegations cannot be built or verified.",
    )
    max_loss_bps: int = setting(
        100,
        _int,
        "Largest loss of one redemption, in 1/10 000 of the portfolio's value at oracle prices "
        "(fees, slippage and price impact must fit in it). Verification refuses a higher bound.",
        check=_basis_points,
    )
    max_staleness: int = setting(
        90000,
        _int,
        "Seconds a price feed's answer may lag the block's timestamp before the guard reverts. "
        "Chainlink feeds update on a price deviation or at their heartbeat (ETH/USD 1 h, "
        "USDC/USD 24 h on mainnet): this must exceed the longest heartbeat of a portfolio's "
        "feeds, or the guard refuses every trade between updates.",
        check=_positive,
    )
    period: int = setting(
        86400, _int, "Seconds per period of the guard's cumulative loss cap.", check=_positive
    )
    period_cap_usd: Decimal = setting(
        Decimal(5000),
        _decimal,
        "Total loss, in USD at oracle prices, that all redemptions of one period may make.",
        check=_non_negative,
    )
    valid_days: int = setting(
        90,
        _int,
        "Days until the delegations built by `delegation build` expire (TimestampEnforcer).",
        check=_positive,
    )


@attrs.frozen
class HealthConfig:
    """The local health and control socket, and optional metrics listener."""

    socket: str = setting(
        "/run/driftd/driftd.sock", _str, "Unix socket for health, status and control."
    )
    metrics_listen: str = setting(
        "",
        _str,
        "host:port of a loopback HTTP listener serving Prometheus metrics; empty: off.",
    )


@attrs.frozen
class AlertsConfig:
    """Alert rules and where alerts go besides the log."""

    high_drift: Decimal = setting(
        Decimal("0.25"),
        _decimal,
        "HIGH_DRIFT fires when a portfolio's max drift exceeds this fraction.",
        check=_positive,
        live=True,
    )
    gas_cost_factor: Decimal = setting(
        Decimal(2),
        _decimal,
        "HIGH_GAS_COST fires when a rebalance's gas cost exceeds this × the expected cost.",
        check=_positive,
        live=True,
    )
    expected_gas_cost_usd: Decimal = setting(
        Decimal(0),
        _decimal,
        "Expected gas cost per rebalance in USD; 0: the median of recent rebalances.",
        check=_non_negative,
        live=True,
    )
    webhook_url: str = setting(
        "",
        _str,
        "POST alerts as JSON (Slack-compatible 'text' plus fields) here; empty: log only.",
        check=_optional_http_url,
        live=True,
    )
    repeat_window: float = setting(
        3600.0,
        _float,
        "Seconds during which a repeat of the same alert for the same portfolio is suppressed.",
        check=_non_negative,
        live=True,
    )


@attrs.frozen
class SupervisorConfig:
    """Restart policy of portfolio actors."""

    backoff_initial: float = setting(
        1.0, _float, "Seconds before the first restart of a crashed actor.", check=_positive
    )
    backoff_max: float = setting(
        300.0, _float, "Longest wait between restarts (exponential, with jitter).", check=_positive
    )
    max_restarts: int = setting(
        5, _int, "Restarts within restart_window after which an actor is parked.", check=_positive
    )
    restart_window: float = setting(
        600.0, _float, "Seconds over which restarts are counted.", check=_positive
    )


@attrs.frozen
class LogConfig:
    """Logging to stdout (systemd's journal collects it)."""

    level: str = setting(
        "info", _str, "debug, info, warning or error.", check=_log_level, live=True
    )
    format: str = setting(
        "auto",
        _choice("auto", "json", "console"),
        "json: one JSON object per line. console: human-readable. auto: console on a terminal.",
    )


@attrs.frozen
class Secrets:
    """Secrets resolved from files, systemd credentials or the environment. Never printed."""

    signer_key: Secret | None = None
    coingecko_api_key: Secret | None = None


@attrs.frozen
class Config:
    """The whole effective configuration."""

    database: DatabaseConfig = DatabaseConfig()
    chain: ChainConfig = ChainConfig()
    signer: SignerConfig = SignerConfig()
    execution: ExecutionConfig = ExecutionConfig()
    rebalance: RebalanceConfig = RebalanceConfig()
    prices: PricesConfig = PricesConfig()
    delegation: DelegationConfig = DelegationConfig()
    guard: GuardConfig = GuardConfig()
    health: HealthConfig = HealthConfig()
    alerts: AlertsConfig = AlertsConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    log: LogConfig = LogConfig()
    secrets: Secrets = attrs.field(default=Secrets(), metadata={"not_a_section": True})
    source: str = attrs.field(default="", metadata={"not_a_section": True})
    """Where the file part came from ("" when from the environment alone)."""


def _section_types() -> dict[str, type[Any]]:
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
class KeySpec:
    """One configuration key as declared: used by loading, the example file and the docs."""

    section: str
    name: str
    default: Any
    doc: str
    env: tuple[str, ...]
    live: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_name(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"


def key_specs() -> list[KeySpec]:
    """Every configuration key, in declaration order."""
    specs = []
    for section, cls in _section_types().items():
        for f in attrs.fields(cls):
            specs.append(
                KeySpec(
                    section=section,
                    name=f.name,
                    default=f.default,
                    doc=f.metadata["doc"],
                    env=f.metadata["env"],
                    live=f.metadata["live"],
                )
            )
    return specs


def _parse_value(attribute: attrs.Attribute[Any], raw: Any, parse: Parser) -> Any:
    value = parse(raw)
    check: Check | None = attribute.metadata["check"]
    if check is not None and (problem := check(value)) is not None:
        raise ValueError(problem)
    return value


def private_key_bytes(text: str) -> bytes:
    """The 32 bytes of a hex secp256k1 private key (``0x`` optional).

    Raises ValueError saying what is wrong, never echoing the text (it is a key, or most of one).
    """
    digits = text[2:] if text[:2].lower() == "0x" else text
    if len(digits) != 64:
        raise ValueError(f"must be 64 hex digits (32 bytes), got {len(digits)} characters")
    if not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError("must be 64 hex digits (32 bytes), got other characters")
    if not 0 < int(digits, 16) < _SECP256K1_ORDER:
        raise ValueError("must be between 1 and the secp256k1 group order - 1")
    return bytes.fromhex(digits)


def _read_file_secret(path: Path, what: str, *, private: bool) -> Secret:
    """The stripped content of ``path``. With ``private`` the file must not be open to its group
    or others (systemd credentials are exempt: systemd made them, and only for this service)."""
    try:
        with path.open(encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if private and mode & _KEY_FILE_FORBIDDEN_MODE:
                # Refused before a byte is read; the path and mode are not secret.
                raise ValueError(
                    f"{what} file {str(path)!r} is readable or writable by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); restrict it with: "
                    f"chmod 600 {shlex.quote(str(path))}"
                )
            text = handle.read().strip()
    except OSError as exc:
        # The path is not secret; the content is never part of an error.
        raise ValueError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {str(path)!r} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{what} file {str(path)!r} is empty")
    return Secret(text)


def _resolve_secret(
    key_file: str, credential: str, env_name: str, env: Mapping[str, str], what: str
) -> tuple[Secret, str] | None:
    """The secret and where it came from (for error messages), or None when not set."""
    if key_file:
        return _read_file_secret(Path(key_file), what, private=True), f"{what} file {key_file!r}"
    credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    if credentials_dir and (Path(credentials_dir) / credential).is_file():
        path = Path(credentials_dir) / credential
        return _read_file_secret(path, what, private=False), f"systemd credential {str(path)!r}"
    if env.get(env_name, "").strip():
        return Secret(env[env_name].strip()), f"${env_name}"
    return None


_FORBIDDEN_SECRET_KEYS: Final = {
    "signer.key": "signer.key_file",
    "signer.private_key": "signer.key_file",
    "prices.coingecko_api_key": "prices.coingecko_api_key_file",
}


def parse_config(document: Mapping[str, Any], env: Mapping[str, str], source: str = "") -> Config:
    """Build a validated :class:`Config` from a parsed TOML document and an environment.

    Raises :class:`ConfigError` listing every problem found, each naming its key.
    """
    problems: list[str] = []
    types = _section_types()

    for section_name, section_value in document.items():
        if section_name not in types:
            problems.append(f"{section_name}: unknown section (known: {', '.join(types)})")
        elif not isinstance(section_value, Mapping):
            problems.append(f"{section_name}: must be a table ([{section_name}])")

    # Each DRIFTD_* variable must name a key, so a typo in a unit file is not silently ignored.
    known_env = {spec.env_name for spec in key_specs()}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known_env and name not in NON_KEY_ENV:
            problems.append(f"{name}: unknown environment variable (no such configuration key)")

    built: dict[str, Any] = {}
    for section_name, cls in types.items():
        raw_section = document.get(section_name, {})
        if not isinstance(raw_section, Mapping):
            continue
        fields = {f.name: f for f in attrs.fields(cls)}
        for key in raw_section:
            dotted = f"{section_name}.{key}"
            if dotted in _FORBIDDEN_SECRET_KEYS:
                problems.append(
                    f"{dotted}: secrets are not read from the config file; "
                    f"use {_FORBIDDEN_SECRET_KEYS[dotted]} or the environment"
                )
            elif key not in fields:
                close = [k for k in fields if k.startswith(key[:4])]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"{dotted}: unknown key{hint}")
        values: dict[str, Any] = {}
        for name, attribute in fields.items():
            dotted = f"{section_name}.{name}"
            spec_env = f"{ENV_PREFIX}{section_name.upper()}_{name.upper()}"
            parse = attribute.metadata["parse"]
            # Lowest precedence first: the file, the seed's aliases, then DRIFTD_SECTION_KEY.
            candidates: list[tuple[str, Any, Parser]] = []
            if name in raw_section:
                candidates.append(("", raw_section[name], parse))
            for alias in attribute.metadata["env"]:
                if alias in env:
                    candidates.append((alias, env[alias], attribute.metadata["env_parse"] or parse))
            if spec_env in env:
                candidates.append((spec_env, env[spec_env], parse))
            for origin, raw, parser in candidates:
                try:
                    values[name] = _parse_value(attribute, raw, parser)
                except ValueError as exc:
                    where = f" (from ${origin})" if origin else ""
                    problems.append(f"{dotted}{where}: {exc}")
        try:
            built[section_name] = cls(**values)
        except (TypeError, ValueError) as exc:  # pragma: no cover - schema bug, not user input
            problems.append(f"{section_name}: {exc}")

    # Cross-key rules.
    if "rebalance" in built:
        rebalance: RebalanceConfig = built["rebalance"]
        if rebalance.min_trade_usd > rebalance.max_trade_usd:
            problems.append(
                "rebalance.min_trade_usd: must be <= rebalance.max_trade_usd "
                f"({rebalance.min_trade_usd} > {rebalance.max_trade_usd})"
            )
    if "database" in built:
        database: DatabaseConfig = built["database"]
        if database.min_connections > database.max_connections:
            problems.append("database.min_connections: must be <= database.max_connections")
    if "supervisor" in built:
        supervisor: SupervisorConfig = built["supervisor"]
        if supervisor.backoff_initial > supervisor.backoff_max:
            problems.append("supervisor.backoff_initial: must be <= supervisor.backoff_max")

    secrets = Secrets()
    if "signer" in built and "prices" in built:
        signer_key: Secret | None = None
        try:
            resolved = _resolve_secret(
                built["signer"].key_file, SIGNER_CREDENTIAL, SIGNER_KEY_ENV, env, "signer key"
            )
        except ValueError as exc:
            problems.append(f"signer.key_file: {exc}")
        else:
            if resolved is not None:
                signer_key, origin = resolved
                try:
                    private_key_bytes(signer_key.reveal())
                except ValueError as exc:
                    where = SIGNER_KEY_ENV if origin.startswith("$") else "signer.key_file"
                    problems.append(
                        f"{where}: {origin} is not a valid secp256k1 private key: {exc}"
                    )
        api_key: Secret | None = None
        try:
            resolved = _resolve_secret(
                built["prices"].coingecko_api_key_file,
                COINGECKO_CREDENTIAL,
                COINGECKO_KEY_ENV,
                env,
                "CoinGecko API key",
            )
        except ValueError as exc:
            problems.append(f"prices.coingecko_api_key_file: {exc}")
        else:
            api_key = None if resolved is None else resolved[0]
        secrets = Secrets(signer_key=signer_key, coingecko_api_key=api_key)

    if problems:
        raise ConfigError(problems)
    return Config(**built, secrets=secrets, source=source)


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config`` wins, then ``$DRIFTD_CONFIG``, then /etc/driftd/config.toml if it exists.

    None means "run from the environment alone".
    """
    if cli_path:
        return Path(cli_path)
    if env.get(ENV_CONFIG_PATH):
        return Path(env[ENV_CONFIG_PATH])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration (file, then environment)."""
    environment = dict(os.environ if env is None else env)
    document: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                # Decimal keeps 0.15 exact: money parameters never pass through float.
                document = tomllib.load(handle, parse_float=Decimal)
        except FileNotFoundError:
            raise ConfigError([f"{path}: config file not found"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except ValueError as exc:  # an integer of more than 4 300 digits: Python's own limit
            raise ConfigError([f"{path}: not valid TOML: a number is too large ({exc})"]) from None
    return parse_config(document, environment, source=str(path) if path else "")


def _display(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return value


def effective_config(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain data for printing, with secrets and passwords masked."""
    out: dict[str, dict[str, Any]] = {}
    for section_name in _section_types():
        section = getattr(config, section_name)
        out[section_name] = {
            f.name: _display(getattr(section, f.name)) for f in attrs.fields(type(section))
        }
    # Every URL is shown with its credentials masked (passwords, key-like path segments, query
    # values); a webhook URL is a secret as a whole, so only its host is shown.
    for values in out.values():
        for name, value in values.items():
            if isinstance(value, str) and "://" in value:
                values[name] = mask_url(value)
    out["alerts"]["webhook_url"] = mask_url(config.alerts.webhook_url, hide_path=True)
    out["secrets"] = {
        "signer_key": "***" if config.secrets.signer_key else "(not set)",
        "coingecko_api_key": "***" if config.secrets.coingecko_api_key else "(not set)",
    }
    return out


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
    for section_name, cls in _section_types().items():
        new_section = getattr(reloaded, section_name)
        old_section = getattr(running, section_name)
        kept = {
            f.name: getattr(old_section, f.name)
            for f in attrs.fields(cls)
            if not f.metadata["live"]
        }
        sections[section_name] = attrs.evolve(new_section, **kept)
    return attrs.evolve(reloaded, secrets=running.secrets, **sections)


RUNTIME_PARAM_ALIASES: Final = {
    # The seed's REBALANCING_PARAMS spelling → our [rebalance] key.
    "driftThreshold": "drift_threshold",
    "cooldownMinutes": "cooldown_minutes",
    "slippageTolerance": "slippage_tolerance",
    "maxTradeSizeUsd": "max_trade_usd",
    "minTradeSizeUsd": "min_trade_usd",
    "priceImpactThreshold": "price_impact_threshold",
}


def apply_runtime_params(config: Config, params: Any) -> Config:
    """Overlay ``system_config.REBALANCING_PARAMS`` (a JSON object of ``[rebalance]`` keys, or
    the seed's camelCase names) on ``config``; the database has the last word.

    Raises :class:`ConfigError` naming each bad key; nothing is applied then.
    """
    where = "system_config.REBALANCING_PARAMS"
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
            values[key] = _parse_value(attribute, raw, attribute.metadata["parse"])
        except ValueError as exc:
            problems.append(f"{where}.{raw_key}: {exc}")
    rebalance = attrs.evolve(config.rebalance, **values)
    if rebalance.min_trade_usd > rebalance.max_trade_usd:
        problems.append(f"{where}: min_trade_usd must be <= max_trade_usd")
    if problems:
        raise ConfigError(problems)
    return attrs.evolve(config, rebalance=rebalance)
