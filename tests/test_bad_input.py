"""The bad-input catalogue (issue 12): configuration, environment, CLI arguments, delegation
files and JSON-RPC answers, each fed to the real `driftd` CLI.

Every case must get an answer that names the problem, with the right sysexits code, and must
change nothing stored: the registry (`driftd token list`, `driftd portfolio list`) reads the
same before and after. The control socket and CoinGecko parts of the catalogue live with their
servers (``test_control_socket_hostile.py``, ``test_price_checks.py``); every case is listed in
the reliability report (``docs/reliability.md``) through the ``bad_input`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from daemon_harness import daemon_document, guarded_delegations, run_cli, write_toml
from reliability import BadInput
from rpc_proxy import (
    DropConnection,
    Fault,
    Garbage,
    RateLimited,
    RpcErrorReply,
    ServerError,
    WrongChainId,
    rpc_proxy,
)

from daemon import db as dbm
from daemon import exitcodes
from daemon.config import DatabaseConfig
from daemon.delegation import (
    Delegation,
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devtools.devnet_records import Devnet

pytestmark = [pytest.mark.bad_input, pytest.mark.chain]

TARGETS = {"USDC": "0.5", "WBTC": "0.3", "WETH": "0.2"}
LIMIT = 60


@attrs.frozen
class Answer:
    code: int
    out: str
    err: str

    @property
    def said(self) -> str:
        """The first lines of what the operator saw (stderr, else stdout)."""
        text = (self.err or self.out).strip()
        return " / ".join(text.splitlines()[:3])[:300]


@attrs.define
class Operator:
    """Runs `driftd` as an operator would (in-process, in a worker thread: the CLI runs its own
    trio loop), with a config file and environment, capturing what it prints."""

    config: Path
    env: dict[str, str]
    capsys: pytest.CaptureFixture[str]
    db: dbm.Database
    delegation: Path
    """A valid signed delegation file for accounts[0] and TARGETS."""

    async def run(self, *argv: str, env: Mapping[str, str] | None = None) -> Answer:
        self.capsys.readouterr()
        code = await run_cli(list(argv), self.config, {**self.env, **(env or {})})
        captured = self.capsys.readouterr()
        return Answer(code=code, out=captured.out, err=captured.err)

    async def registry(self) -> list[object]:
        """Every stored token and portfolio, as the database has them."""
        return [*await self.db.tokens(), *await self.db.portfolios()]


def expect(record: BadInput, answer: Answer, code: int, says: str) -> None:
    record.expected = f"exit {code}: “{says}”"
    record.observed = f"exit {answer.code}: {answer.said}"
    assert answer.code == code, answer
    assert says.lower() in (answer.err + answer.out).lower(), answer


@pytest.fixture
async def operator(
    devnet: Devnet,
    db_config: DatabaseConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    db: dbm.Database,
) -> Operator:
    """The devnet's tokens registered (as `driftd token add` would; the database is fresh for
    each test) and a valid delegation file for accounts[0]."""
    config = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    coingecko = {"USDC": "usd-coin", "WETH": "weth", "WBTC": "wrapped-bitcoin"}
    for token in devnet.tokens:
        await db.add_token(
            token.symbol,
            token.address,
            chain_id=devnet.chain_id,
            decimals=token.decimals,
            coingecko_id=coingecko[token.symbol],
            is_quote=token.symbol == devnet.quote_symbol,
            price_feed=devnet.feeds.get(token.symbol),
        )
    delegation = tmp_path / "signed.json"
    delegation.write_text(dump_delegation_file(_signed(devnet)))
    return Operator(config=config, env=env, capsys=capsys, db=db, delegation=delegation)


# --- configuration files and environment variables -----------------------------------------


@attrs.frozen
class ConfigCase:
    name: str
    given: str
    edit: Callable[[dict[str, Any]], None] = lambda document: None
    env: Mapping[str, str] = attrs.Factory(dict)
    raw: str | None = None
    """Replaces the file's text (TOML syntax errors)."""
    says: str = ""
    code: int = exitcodes.CONFIG_ERROR


def _set(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document.setdefault(section, {})[key] = value

    return edit


CONFIG_CASES = (
    ConfigCase(
        "unknown_key",
        "[rebalance] treshold = 0.15 (a typo)",
        _set("rebalance", "treshold", 0.15),
        says="rebalance.treshold: unknown key",
    ),
    ConfigCase(
        "wrong_type",
        'cooldown_minutes = "soon"',
        _set("rebalance", "cooldown_minutes", "soon"),
        says="rebalance.cooldown_minutes",
    ),
    ConfigCase(
        "slippage_not_a_fraction",
        "slippage_tolerance = 1.5",
        _set("rebalance", "slippage_tolerance", 1.5),
        says="rebalance.slippage_tolerance",
    ),
    ConfigCase(
        "negative_cooldown",
        "cooldown_minutes = -1",
        _set("rebalance", "cooldown_minutes", -1),
        says="rebalance.cooldown_minutes",
    ),
    ConfigCase(
        "nan_threshold",
        "drift_threshold = nan",
        raw="[rebalance]\ndrift_threshold = nan\n",
        says="rebalance.drift_threshold",
    ),
    ConfigCase(
        "infinite_trade_size",
        "max_trade_usd = inf",
        raw="[rebalance]\nmax_trade_usd = inf\n",
        says="rebalance.max_trade_usd",
    ),
    ConfigCase(
        "min_above_max_trade",
        "min_trade_usd = 500, max_trade_usd = 100",
        lambda d: d.setdefault("rebalance", {}).update(min_trade_usd=500, max_trade_usd=100),
        says="min_trade_usd",
    ),
    ConfigCase(
        "toml_syntax",
        "an unclosed table header",
        raw="[rebalance\ndrift_threshold = 0.2\n",
        says="bad.toml: not valid TOML",
    ),
    ConfigCase(
        "router_not_an_address",
        'router = "0x1234"',
        _set("chain", "router", "0x1234"),
        says="chain.router",
    ),
    ConfigCase(
        "router_bad_checksum",
        "router with one letter's case flipped (EIP-55 mismatch)",
        lambda d: d["chain"].update(router=_flip_case(d["chain"]["router"])),
        says="chain.router",
    ),
    ConfigCase(
        "rpc_url_not_a_url",
        'rpc_url = "localhost 8545"',
        _set("chain", "rpc_url", "localhost 8545"),
        says="chain.rpc_url",
    ),
    ConfigCase(
        "loss_bound_above_100_percent",
        "guard.max_loss_bps = 20000",
        _set("guard", "max_loss_bps", 20_000),
        says="guard.max_loss_bps",
    ),
    ConfigCase(
        "env_overflowing_number",
        "DRIFTD_DATABASE_COMMAND_TIMEOUT=1e999",
        env={"DRIFTD_DATABASE_COMMAND_TIMEOUT": "1e999"},
        says="DRIFTD_DATABASE_COMMAND_TIMEOUT",
    ),
    ConfigCase(
        "env_not_a_number",
        "DRIFTD_REBALANCE_DRIFT_THRESHOLD=high",
        env={"DRIFTD_REBALANCE_DRIFT_THRESHOLD": "high"},
        says="DRIFTD_REBALANCE_DRIFT_THRESHOLD",
    ),
    ConfigCase(
        "env_unknown_variable",
        "DRIFTD_REBALANCE_TRESHOLD=0.1 (a typo)",
        env={"DRIFTD_REBALANCE_TRESHOLD": "0.1"},
        says="DRIFTD_REBALANCE_TRESHOLD",
    ),
    ConfigCase(
        "env_nan",
        "DRIFTD_REBALANCE_COOLDOWN_MINUTES=nan",
        env={"DRIFTD_REBALANCE_COOLDOWN_MINUTES": "nan"},
        says="DRIFTD_REBALANCE_COOLDOWN_MINUTES",
    ),
    ConfigCase(
        "signer_key_malformed",
        "DRIFTD_SIGNER_KEY=0x1234 (too short)",
        env={"DRIFTD_SIGNER_KEY": "0x1234"},
        says="signer",
    ),
    ConfigCase(
        "signer_key_zero",
        "DRIFTD_SIGNER_KEY of 64 zeros",
        env={"DRIFTD_SIGNER_KEY": "0x" + "00" * 32},
        says="signer",
    ),
)


def _flip_case(address: str) -> str:
    for index, char in enumerate(address[2:], start=2):
        if char.isalpha():
            flipped = char.lower() if char.isupper() else char.upper()
            return address[:index] + flipped + address[index + 1 :]
    raise AssertionError(f"{address} has no letter")


@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda case: case.name)
async def test_configuration(
    case: ConfigCase, operator: Operator, devnet: Devnet, bad_input: BadInput
) -> None:
    """`driftd check-config` refuses the configuration, naming the key; the registry is as it
    was (the running daemon's reload path is the same parser: a refused file keeps the old
    configuration, see ``test_service.py``)."""
    bad_input.area = "env" if case.env else "config"
    bad_input.given = case.given
    with trio.fail_after(LIMIT):
        before = await operator.registry()
        document = daemon_document(devnet, _db_config(operator))
        case.edit(document)
        path = write_toml(operator.config.with_name("bad.toml"), document)
        if case.raw is not None:
            path.write_text(case.raw)
        answer = await _check_config(operator, path, case.env)
        expect(bad_input, answer, case.code, case.says)
        assert devnet.signer_key.reveal()[2:] not in answer.err + answer.out
        assert await operator.registry() == before
    bad_input.unharmed = "registry unchanged"


def _db_config(operator: Operator) -> DatabaseConfig:
    text = operator.config.read_text()
    url = next(line for line in text.splitlines() if line.startswith("url = "))
    return DatabaseConfig(url=json.loads(url.removeprefix("url = ")))


async def _check_config(operator: Operator, path: Path, env: Mapping[str, str]) -> Answer:
    saved = operator.config
    operator.config = path
    try:
        return await operator.run("check-config", env=env)
    finally:
        operator.config = saved


async def test_world_readable_key_file(
    operator: Operator, devnet: Devnet, bad_input: BadInput, tmp_path: Path
) -> None:
    bad_input.area = "config"
    bad_input.given = "signer.key_file readable by everyone (0644)"
    with trio.fail_after(LIMIT):
        key_file = tmp_path / "signer.key"
        key_file.write_text(devnet.signer_key.reveal())
        key_file.chmod(0o644)
        document = daemon_document(devnet, _db_config(operator))
        document.setdefault("signer", {})["key_file"] = str(key_file)
        path = write_toml(tmp_path / "keyfile.toml", document)
        env = {k: v for k, v in operator.env.items() if k != "DRIFTD_SIGNER_KEY"}
        saved_env, operator.env = operator.env, env
        try:
            answer = await _check_config(operator, path, {})
        finally:
            operator.env = saved_env
        expect(bad_input, answer, exitcodes.CONFIG_ERROR, "chmod 600")
        assert str(key_file) in answer.err
        assert devnet.signer_key.reveal()[2:] not in answer.err + answer.out
    bad_input.unharmed = "key file untouched"
    assert key_file.read_text() == devnet.signer_key.reveal()


# --- CLI arguments --------------------------------------------------------------------------


@attrs.frozen
class CliCase:
    name: str
    given: str
    argv: Callable[[Devnet], list[str]]
    code: int
    says: str


DELEGATION_FILE = "{delegation}"
"""Stands for the operator's valid delegation file in a case's arguments."""


def _add(*targets: str, account: Callable[[Devnet], str] | None = None) -> Callable[..., list[str]]:
    def argv(devnet: Devnet) -> list[str]:
        owner = account(devnet) if account else devnet.accounts[0].address
        argv = ["portfolio", "add", "p", "--account", owner, "--delegation", DELEGATION_FILE]
        return [*argv, "--target", *targets]

    return argv


def _token(*argv: str) -> Callable[[Devnet], list[str]]:
    return lambda devnet: ["token", "add", *argv]


def _code_less(devnet: Devnet) -> str:
    return devnet.accounts[0].owner  # an EOA: no code


CLI_CASES = (
    CliCase(
        "targets_do_not_sum_to_1",
        "--target USDC=0.5 WETH=0.3",
        _add("USDC=0.5", "WETH=0.3"),
        exitcodes.DATA_ERROR,
        "sum",
    ),
    CliCase(
        "unknown_token",
        "--target USDC=0.5 DOGE=0.5",
        _add("USDC=0.5", "DOGE=0.5"),
        exitcodes.DATA_ERROR,
        "DOGE",
    ),
    CliCase(
        "duplicate_token",
        "--target WETH=0.5 WETH=0.5",
        _add("WETH=0.5", "WETH=0.5"),
        exitcodes.DATA_ERROR,
        "duplicate",
    ),
    CliCase(
        "weight_not_a_number",
        "--target USDC=half WETH=0.5",
        _add("USDC=half", "WETH=0.5"),
        exitcodes.DATA_ERROR,
        "not a number",
    ),
    CliCase(
        "weight_infinite",
        "--target USDC=inf WETH=0.5",
        _add("USDC=inf", "WETH=0.5"),
        exitcodes.DATA_ERROR,
        "USDC",
    ),
    CliCase(
        "weight_huge",
        "--target USDC=1e400 WETH=0.5",
        _add("USDC=1e400", "WETH=0.5"),
        exitcodes.DATA_ERROR,
        "USDC",
    ),
    CliCase(
        "weight_negative",
        "--target USDC=-0.5 WETH=1.5",
        _add("USDC=-0.5", "WETH=1.5"),
        exitcodes.DATA_ERROR,
        "weight must be in (0, 1]",
    ),
    CliCase(
        "account_not_an_address",
        "--account 0x1234",
        _add("USDC=0.5", "WETH=0.5", account=lambda devnet: "0x1234"),
        exitcodes.DATA_ERROR,
        "0x1234",
    ),
    CliCase(
        "account_bad_checksum",
        "--account with one letter's case flipped (EIP-55 mismatch)",
        _add("USDC=0.5", "WETH=0.5", account=lambda d: _flip_case(d.accounts[0].address)),
        exitcodes.DATA_ERROR,
        "checksum",
    ),
    CliCase(
        "account_zero_address",
        "--account 0x000…0",
        _add("USDC=0.5", "WETH=0.5", account=lambda devnet: "0x" + "00" * 20),
        exitcodes.DATA_ERROR,
        "zero address",
    ),
    CliCase(
        "token_zero_address",
        "token add DAI 0x000…0",
        _token("DAI", "0x" + "00" * 20, "--decimals", "18"),
        exitcodes.DATA_ERROR,
        "zero address",
    ),
    CliCase(
        "token_without_code",
        "token add DAI <an EOA>",
        lambda devnet: ["token", "add", "DAI", _code_less(devnet), "--decimals", "18"],
        exitcodes.DATA_ERROR,
        "no code",
    ),
    CliCase(
        "token_decimals_mismatch",
        "token add USDX <USDC's address> --decimals 18 (the chain says 6)",
        lambda devnet: ["token", "add", "USDX", devnet.token("USDC").address, "--decimals", "18"],
        exitcodes.DATA_ERROR,
        "decimals",
    ),
    CliCase(
        "token_symbol_taken",
        "token add WETH <another address>",
        lambda devnet: ["token", "add", "WETH", devnet.token("WBTC").address, "--decimals", "8"],
        exitcodes.DATA_ERROR,
        "WETH",
    ),
    CliCase(
        "unknown_subcommand",
        "driftd portfolio rename",
        lambda devnet: ["portfolio", "rename", "p", "q"],
        exitcodes.USAGE,
        "invalid choice",
    ),
    CliCase(
        "missing_argument",
        "driftd portfolio add p (no --account)",
        lambda devnet: ["portfolio", "add", "p", "--target", "USDC=1"],
        exitcodes.USAGE,
        "--account",
    ),
    CliCase(
        "unknown_option",
        "driftd token list --colour",
        lambda devnet: ["token", "list", "--colour"],
        exitcodes.USAGE,
        "--colour",
    ),
)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
async def test_cli_arguments(
    case: CliCase, operator: Operator, devnet: Devnet, bad_input: BadInput
) -> None:
    bad_input.area = "cli"
    bad_input.given = case.given
    with trio.fail_after(LIMIT):
        before = await operator.registry()
        argv = [str(operator.delegation) if a == DELEGATION_FILE else a for a in case.argv(devnet)]
        answer = await operator.run(*argv)
        expect(bad_input, answer, case.code, case.says)
        assert await operator.registry() == before
    bad_input.unharmed = "registry unchanged"


async def test_second_portfolio_on_the_same_account(
    operator: Operator, devnet: Devnet, bad_input: BadInput, tmp_path: Path
) -> None:
    bad_input.area = "cli"
    bad_input.given = "portfolio add of a second portfolio on an account that already has one"
    account = devnet.accounts[0]
    file = operator.delegation
    argv = ["portfolio", "add", "first", "--account", account.address, "--delegation", str(file)]
    targets = ["--target", *[f"{s}={w}" for s, w in TARGETS.items()]]
    with trio.fail_after(LIMIT):
        assert (await operator.run(*argv, *targets)).code == 0
        before = await operator.registry()
        argv[2] = "second"
        answer = await operator.run(*argv, "--target", "USDC=0.2", "WETH=0.8")
        expect(bad_input, answer, exitcodes.DATA_ERROR, "first")
        assert await operator.registry() == before
    bad_input.unharmed = "registry unchanged; the first portfolio kept"


# --- delegation files -----------------------------------------------------------------------


@attrs.frozen
class DelegationCase:
    name: str
    given: str
    content: Callable[[Devnet], str]
    says: str
    code: int = exitcodes.DATA_ERROR


def _signed(devnet: Devnet, **overrides: Any) -> list[Delegation]:
    return guarded_delegations(devnet, devnet.accounts[0], list(TARGETS), **overrides)


def _file(delegations: list[Delegation]) -> str:
    return dump_delegation_file(delegations)


def _bad_signature(devnet: Devnet) -> str:
    signed = _signed(devnet)
    broken = [
        attrs.evolve(d, signature=d.signature[:-2] + bytes([d.signature[-2] ^ 1, 27]))
        for d in signed
    ]
    return _file(broken)


def _other_chain(devnet: Devnet) -> str:
    domain = DelegationDomain(chain_id=1, manager=devnet.manager)
    owner = devnet.accounts[0].owner_key
    return _file(
        [sign_delegation(attrs.evolve(d, signature=b""), domain, owner) for d in _signed(devnet)]
    )


def _no_guard(devnet: Devnet) -> str:
    built = build_portfolio_delegations(
        account=devnet.accounts[0].address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[devnet.token(symbol).address for symbol in TARGETS],
        enforcers=devnet.delegation_config(),
        salt=99,
        expires_at=2**40,
        nonce=0,
    )
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    owner = devnet.accounts[0].owner_key
    return _file([sign_delegation(d, domain, owner) for d in built.as_list()])


DELEGATION_CASES = (
    DelegationCase(
        "malformed_json", "a truncated JSON document", lambda d: '[{"delegate": ', "JSON"
    ),
    DelegationCase("not_an_array", "a JSON object, not an array", lambda d: "{}", "array"),
    DelegationCase("empty_array", "[]", lambda d: "[]", "non-empty JSON array"),
    DelegationCase("bad_signature", "one signature byte changed", _bad_signature, "signature"),
    DelegationCase(
        "wrong_delegate",
        "delegations naming another delegate",
        lambda d: _file(_signed(d, delegate=d.accounts[1].address)),
        "delegate",
    ),
    DelegationCase(
        "wrong_delegator",
        "another account's delegations",
        lambda d: _file(guarded_delegations(d, d.accounts[1], list(TARGETS))),
        "delegator",
    ),
    DelegationCase("other_chain", "signed for chain 1", _other_chain, "signature"),
    DelegationCase("no_guard", "no oracle guard caveat", _no_guard, "no oracle guard caveat"),
    DelegationCase(
        "expired",
        "delegations that expired in 2001",
        lambda d: _file(_signed(d, expires_at=1_000_000_000)),
        "expired",
    ),
    DelegationCase(
        "guard_token_set_differs",
        "a guard over USDC and WETH for a USDC/WBTC/WETH portfolio",
        lambda d: _file(guarded_delegations(d, d.accounts[0], ["USDC", "WETH"])),
        "guard tokens are not exactly",
    ),
)


@pytest.mark.parametrize("case", DELEGATION_CASES, ids=lambda case: case.name)
async def test_delegation_files(
    case: DelegationCase, operator: Operator, devnet: Devnet, bad_input: BadInput, tmp_path: Path
) -> None:
    """`driftd portfolio add --delegation FILE` refuses the file, naming the problem."""
    bad_input.area = "delegation"
    bad_input.given = case.given
    file = tmp_path / "delegations.json"
    file.write_text(case.content(devnet))
    argv = ["portfolio", "add", "p", "--account", devnet.accounts[0].address]
    argv += ["--delegation", str(file), "--target", *[f"{s}={w}" for s, w in TARGETS.items()]]
    with trio.fail_after(LIMIT):
        before = await operator.registry()
        answer = await operator.run(*argv)
        expect(bad_input, answer, case.code, case.says)
        assert await operator.registry() == before
    bad_input.unharmed = "registry unchanged"


# --- JSON-RPC answers ------------------------------------------------------------------------


@attrs.frozen
class RpcCase:
    name: str
    given: str
    fault: Fault | None
    method: str | None
    code: int
    says: str


RPC_CASES = (
    RpcCase(
        "html_reply",
        "HTTP 200 with an HTML page",
        Garbage(),
        None,
        exitcodes.UNAVAILABLE,
        "not JSON",
    ),
    RpcCase(
        "server_error",
        "HTTP 503 on every request",
        ServerError(503),
        None,
        exitcodes.UNAVAILABLE,
        "503",
    ),
    RpcCase(
        "rate_limited",
        "HTTP 429 on every request",
        RateLimited(0.05),
        None,
        exitcodes.UNAVAILABLE,
        "429",
    ),
    RpcCase(
        "connection_dropped",
        "the connection closed without an answer",
        DropConnection(),
        None,
        exitcodes.UNAVAILABLE,
        "cannot read the chain",
    ),
    RpcCase(
        "error_object",
        "eth_call answered with a JSON-RPC error object",
        RpcErrorReply(-32000, "header not found"),
        "eth_call",
        exitcodes.UNAVAILABLE,
        "header not found",
    ),
    RpcCase(
        "wrong_chain",
        "eth_chainId answers 1 (the config says 31337)",
        WrongChainId(1),
        "eth_chainId",
        exitcodes.CONFIG_ERROR,
        "chain",
    ),
    RpcCase(
        "nothing_listening",
        "no server at the RPC URL",
        None,
        None,
        exitcodes.UNAVAILABLE,
        "cannot read the chain: http://127.0.0.1:9",
    ),
)


@pytest.mark.parametrize("case", RPC_CASES, ids=lambda case: case.name)
async def test_json_rpc_answers(
    case: RpcCase,
    operator: Operator,
    devnet: Devnet,
    db_config: DatabaseConfig,
    bad_input: BadInput,
    tmp_path: Path,
) -> None:
    """`driftd token add` (which reads the token on chain) against a node that answers badly:
    an error naming the endpoint, never a traceback, and nothing registered."""
    bad_input.area = "json-rpc"
    bad_input.given = case.given
    argv = ["token", "add", "TKN", devnet.token("WETH").address, "--decimals", "18"]
    with trio.fail_after(LIMIT):
        before = await operator.registry()
        async with rpc_proxy(devnet.rpc_url) as proxy:
            url = proxy.url if case.name != "nothing_listening" else "http://127.0.0.1:9/"
            if case.fault is not None:
                proxy.inject(case.method, case.fault, times=None)
            document = daemon_document(devnet, db_config)
            document["chain"].update(rpc_url=url, max_retries=1, request_timeout=2.0)
            path = write_toml(tmp_path / "rpc.toml", document)
            saved, operator.config = operator.config, path
            try:
                answer = await operator.run(*argv)
            finally:
                operator.config = saved
        expect(bad_input, answer, case.code, case.says)
        assert "Traceback" not in answer.err
        assert await operator.registry() == before
    bad_input.unharmed = "registry unchanged"
