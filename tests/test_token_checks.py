"""Registration checks what it registers against the chain (issue 12): `token add` reads the
token's code, ``decimals()`` and ``symbol()``; addresses with a wrong EIP-55 checksum and the
zero address are refused; `portfolio add` refuses an undeployed account, a second portfolio on
one account, delegations that do not cover every token, and non-finite numbers; the running
daemon holds back a portfolio whose token's registered decimals are not the chain's.

Each bad input is a row of :data:`CASES` ``(name, input, exit code, message fragment)``. The
input is ``{"argv": "..."}`` (the ``driftd`` command line after ``--config``, split on
spaces), plus optionally ``"setup"`` (``"tokens"``: the devnet's tokens registered;
``"portfolio"``: and portfolio ``main`` on the first smart account) and ``"chain"``
(``[chain]`` overrides). ``{NAME}`` in the argv and the message stands for a devnet address or
a file made for the case (:func:`_values`).
All run through the real command line against the devnet and a real database.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from daemon_harness import (
    GUARD_DOCUMENT,
    daemon_document,
    guarded_delegations,
    register_portfolio,
    register_tokens,
    run_cli,
    write_toml,
)
from reliability import BadInput
from test_daemon import evaluated, running_daemon, wait_for

from daemon import db as dbm
from daemon import exitcodes
from daemon.address import to_address
from daemon.chain import ChainClient
from daemon.cli.delegation import guard_terms
from daemon.config import DatabaseConfig, GuardConfig
from daemon.delegation import (
    DelegationDomain,
    build_portfolio_delegations,
    dump_delegation_file,
    sign_delegation,
)
from daemon.devtools.devnet_records import Devnet, DevnetToken, SmartAccount
from daemon.guard import guard_caveat

DATA = exitcodes.DATA_ERROR
ZERO = "0x" + "0" * 40
NO_CODE = "0x" + "5e" * 20  # nothing deployed there
Case = tuple[str, dict[str, Any], int, str]

CASES: tuple[Case, ...] = (
    # --- token add: the token on chain ---
    (
        "token add: --decimals differs from decimals()",
        {"argv": "token add USDC {USDC} --decimals 18"},
        DATA,
        "--decimals: 18, but decimals() of the token at {USDC} is 6",
    ),
    (
        "token add: address without code (an EOA)",
        {"argv": "token add SIG {SIGNER} --decimals 18"},
        DATA,
        "ADDRESS: {SIGNER} has no code on chain",
    ),
    (
        "token add: address where nothing was ever deployed",
        {"argv": "token add NONE {NO_CODE}"},
        DATA,
        "ADDRESS: {NO_CODE} has no code on chain",
    ),
    (
        "token add: a contract without decimals() (the router)",
        {"argv": "token add RTR {ROUTER}"},
        DATA,
        "ADDRESS: the contract at {ROUTER} does not answer decimals()",
    ),
    (
        "token add: symbol() says another token (wrong address)",
        {"argv": "token add WETH {WBTC} --decimals 8"},
        DATA,
        "SYMBOL: WETH, but symbol() of the contract at {WBTC} is 'WBTC'",
    ),
    (
        "token add: the zero address",
        {"argv": "token add ZERO {ZERO} --decimals 18"},
        DATA,
        "ADDRESS: is the zero address",
    ),
    (
        "token add: wrong EIP-55 checksum",
        {"argv": "token add USDC {USDC_TYPO} --decimals 6"},
        DATA,
        "ADDRESS: {USDC_TYPO} does not match its EIP-55 checksum",
    ),
    (
        "token add: --feed without code",
        {"argv": "token add WETH {WETH} --feed {NO_CODE}"},
        DATA,
        "--feed: {NO_CODE} has no code on chain",
    ),
    (
        "token add: --feed is the zero address",
        {"argv": "token add WETH {WETH} --feed {ZERO}"},
        DATA,
        "--feed: is the zero address",
    ),
    (
        "token add: --feed with a wrong checksum",
        {"argv": "token add WETH {WETH} --feed {FEED_TYPO}"},
        DATA,
        "--feed: {FEED_TYPO} does not match its EIP-55 checksum",
    ),
    # --- token add: numbers ---
    (
        "token add: --decimals inf",
        {"argv": "token add USDC {USDC} --decimals inf"},
        DATA,
        "--decimals: must be an integer in 0..77, got 'inf'",
    ),
    (
        "token add: --decimals nan",
        {"argv": "token add USDC {USDC} --decimals nan"},
        DATA,
        "--decimals: must be an integer in 0..77",
    ),
    (
        "token add: --decimals 1e999",
        {"argv": "token add USDC {USDC} --decimals 1e999"},
        DATA,
        "--decimals: must be an integer in 0..77",
    ),
    (
        "token add: --decimals -1",
        {"argv": "token add USDC {USDC} --decimals=-1"},
        DATA,
        "--decimals: must be an integer in 0..77",
    ),
    (
        "token add: --decimals of 30 digits",
        {"argv": "token add USDC {USDC} --decimals 999999999999999999999999999999"},
        DATA,
        "--decimals: must be an integer in 0..77",
    ),
    (
        "token add: --decimals above 77",
        {"argv": "token add USDC {USDC} --decimals 78"},
        DATA,
        "--decimals: must be in 0..77, got 78",
    ),
    # --- token add: the chain ---
    (
        "token add: chain unreachable",
        {
            "argv": "token add USDC {USDC}",
            "chain": {"rpc_url": "http://127.0.0.1:9", "max_retries": 0},
        },
        exitcodes.UNAVAILABLE,
        "cannot read the chain",
    ),
    (
        "token add: the node serves another chain",
        {"argv": "token add USDC {USDC}", "chain": {"chain_id": 1}},
        exitcodes.CONFIG_ERROR,
        "chain.rpc_url: chain id mismatch: configured 1",
    ),
    # --- portfolio add: addresses ---
    (
        "portfolio add: --account with a wrong checksum",
        {"argv": "portfolio add p --account {ACCOUNT0_TYPO} --target USDC=1"},
        DATA,
        "--account: {ACCOUNT0_TYPO} does not match its EIP-55 checksum",
    ),
    (
        "portfolio add: --account is the zero address",
        {"argv": "portfolio add p --account {ZERO} --target USDC=1"},
        DATA,
        "--account: is the zero address",
    ),
    (
        "portfolio add: --owner with a wrong checksum",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=1 --owner {ROUTER_TYPO}"},
        DATA,
        "--owner: {ROUTER_TYPO} does not match its EIP-55 checksum",
    ),
    (
        "portfolio add: --owner is the zero address",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=1 --owner {ZERO}"},
        DATA,
        "--owner: is the zero address",
    ),
    (
        "portfolio add: an undeployed (counterfactual) smart account",
        {
            "argv": "portfolio add p --account {UNDEPLOYED} --target USDC=0.5 WETH=0.5"
            " --delegation {UNDEPLOYED_FILE}",
            "setup": "tokens",
        },
        DATA,
        "--account {UNDEPLOYED}: has no code on chain",
    ),
    # --- portfolio add: one account, one portfolio ---
    (
        "portfolio add: a second portfolio on an account that has one",
        {
            "argv": "portfolio add second --account {ACCOUNT0} --target USDC=0.2 WETH=0.8"
            " --delegation {ACCOUNT0_FILE}",
            "setup": "portfolio",
        },
        DATA,
        "--account {ACCOUNT0}: already has the active portfolio 'main' (id 1)",
    ),
    # --- portfolio add: delegations that do not cover every target token ---
    (
        "portfolio add: the approve delegation misses a target token",
        {
            "argv": "portfolio add p --account {ACCOUNT0} --target USDC=0.5 WETH=0.5"
            " --delegation {APPROVE_MISSES_WETH}",
            "setup": "tokens",
        },
        DATA,
        "approve: does not cover the portfolio's token(s) WETH",
    ),
    (
        "portfolio add: the guard misses a target token",
        {
            "argv": "portfolio add p --account {ACCOUNT0} --target USDC=0.5 WETH=0.5"
            " --delegation {GUARD_MISSES_WETH}",
            "setup": "tokens",
        },
        DATA,
        "swap: guard tokens are not exactly the portfolio's tokens and the quote token "
        "(missing ['{WETH}']",
    ),
    (
        "portfolio add: the approve delegation covers a token beyond the targets",
        {
            "argv": "portfolio add p --account {ACCOUNT0} --target USDC=0.5 WETH=0.5"
            " --delegation {APPROVE_ADDS_WBTC}",
            "setup": "tokens",
        },
        DATA,
        "approve: targets beyond the portfolio's tokens: ['{WBTC}']",
    ),
    # --- portfolio add: numbers and files ---
    (
        "portfolio add: weight inf",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=inf"},
        DATA,
        "--target 'USDC=inf': weight must be in (0, 1]",
    ),
    (
        "portfolio add: weight -inf",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=-inf"},
        DATA,
        "--target 'USDC=-inf': weight must be in (0, 1]",
    ),
    (
        "portfolio add: weight nan",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=nan"},
        DATA,
        "--target 'USDC=nan': weight must be in (0, 1]",
    ),
    (
        "portfolio add: weight 1e999",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=1e999"},
        DATA,
        "--target 'USDC=1e999': weight must be in (0, 1]",
    ),
    (
        "portfolio add: delegation file nested 100 000 deep",
        {"argv": "portfolio add p --account {ACCOUNT0} --target USDC=1 --delegation {DEEP_FILE}"},
        DATA,
        "not valid JSON: nested deeper than 16",
    ),
    (
        "portfolio add: delegation file with a 5000-digit number",
        {
            "argv": "portfolio add p --account {ACCOUNT0} --target USDC=1"
            " --delegation {HUGE_NUMBER_FILE}"
        },
        DATA,
        "not valid JSON: Exceeds the limit (4300 digits)",
    ),
)


def typo(address: str) -> str:
    """``address`` with the case of its last letter flipped: a wrong EIP-55 checksum."""
    index = max(i for i, c in enumerate(address) if c.isalpha() and i > 1)
    return address[:index] + address[index].swapcase() + address[index + 1 :]


def _signed_file(path: Path, account: SmartAccount, devnet: Devnet, **parts: Any) -> Path:
    """Delegations from ``account`` as the owner signs them; ``approve`` and ``guard`` (symbol
    lists) let a case sign narrower or wider ones than the portfolio needs."""
    approve = parts.get("approve", ["USDC", "WETH"])
    guard = devnet.guard_config(GuardConfig(**GUARD_DOCUMENT))
    terms = guard_terms(guard, devnet.guarded_tokens(parts.get("guard", ["USDC", "WETH"])))
    built = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[devnet.token(symbol).address for symbol in approve],
        enforcers=devnet.delegation_config(),
        salt=4711,
        guard=guard_caveat(guard.enforcer, terms),
        expires_at=2**40,
        nonce=0,
    )
    domain = DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)
    signed = [sign_delegation(d, domain, account.owner_key) for d in built.as_list()]
    path.write_text(dump_delegation_file(signed))
    return path


def _values(devnet: Devnet, tmp_path: Path, wanted: str) -> dict[str, str]:
    """What the ``{NAME}`` placeholders in ``wanted`` stand for (files made only if named)."""
    account = devnet.accounts[0]
    undeployed = SmartAccount(
        address=to_address("0x" + "a1" * 20), owner=account.owner, owner_key=account.owner_key
    )
    values = {
        "ZERO": ZERO,
        "NO_CODE": to_address(NO_CODE),
        "USDC": devnet.token("USDC").address,
        "WETH": devnet.token("WETH").address,
        "WBTC": devnet.token("WBTC").address,
        "ROUTER": devnet.router,
        "SIGNER": devnet.signer,
        "ACCOUNT0": account.address,
        "UNDEPLOYED": undeployed.address,
    }
    values["USDC_TYPO"] = typo(values["USDC"])
    values["ROUTER_TYPO"] = typo(devnet.router)
    values["FEED_TYPO"] = typo(devnet.feeds["WETH"])
    values["ACCOUNT0_TYPO"] = typo(account.address)
    files = {
        "UNDEPLOYED_FILE": lambda p: _signed_file(p, undeployed, devnet),
        "ACCOUNT0_FILE": lambda p: _signed_file(p, account, devnet),
        "APPROVE_MISSES_WETH": lambda p: _signed_file(p, account, devnet, approve=["USDC"]),
        "GUARD_MISSES_WETH": lambda p: _signed_file(p, account, devnet, guard=["USDC"]),
        "APPROVE_ADDS_WBTC": lambda p: _signed_file(
            p, account, devnet, approve=["USDC", "WETH", "WBTC"]
        ),
        "DEEP_FILE": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
        "HUGE_NUMBER_FILE": lambda p: p.write_text("[" + "1" * 5000 + "]"),
    }
    for name, make in files.items():
        if "{" + name + "}" in wanted:
            path = tmp_path / f"{name.lower()}.json"
            make(path)
            values[name] = str(path)
    return values


@pytest.mark.parametrize(("name", "given", "code", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.bad_input
async def test_bad_registration_input_is_refused(
    name: str,
    given: dict[str, Any],
    code: int,
    message: str,
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bad_input: BadInput,
) -> None:
    bad_input.area = "delegation" if "--delegation" in given["argv"] else "cli"
    bad_input.given = f"{name}: driftd {given['argv']}"
    bad_input.expected = f"exit {code}: “{message}”"
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    document = daemon_document(devnet, db_config, chain=given.get("chain", {}))
    config = write_toml(tmp_path / "c.toml", document)
    good = write_toml(tmp_path / "good.toml", daemon_document(devnet, db_config))
    values = _values(devnet, tmp_path, given["argv"] + message)
    with trio.fail_after(60):
        if given.get("setup") in ("tokens", "portfolio"):
            await register_tokens(devnet, good, env)
        if given.get("setup") == "portfolio":
            targets = {"USDC": "0.5", "WETH": "0.5"}
            await register_portfolio(
                devnet, devnet.accounts[0], "main", targets, good, env, tmp_path
            )
        before_tokens = await db.tokens()
        before_portfolios = await db.portfolios()
        capsys.readouterr()
        argv = [part.format(**values) for part in given["argv"].split()]
        exit_code = await run_cli(argv, config, env)
        err = capsys.readouterr().err
        first = err.strip().splitlines()[0] if err.strip() else ""
        bad_input.observed = f"exit {exit_code}: {first[:200]}"
        assert exit_code == code, name
        assert message.format(**values) in err, err
        assert "Traceback" not in err
        # Nothing stored was harmed, nothing new was stored.
        assert await db.tokens() == before_tokens
        assert await db.portfolios() == before_portfolios
    bad_input.unharmed = "tokens and portfolios unchanged"


async def test_token_add_reads_decimals_from_the_chain(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--decimals`` is optional; a matching one, lowercase and uppercase addresses (no
    checksum, EIP-55), and a deliberate symbol mismatch are accepted."""
    config = write_toml(tmp_path / "c.toml", daemon_document(devnet, db_config))
    usdc, wbtc, weth = (devnet.token(s) for s in ("USDC", "WBTC", "WETH"))
    with trio.fail_after(60):
        assert await run_cli(["token", "add", "USDC", usdc.address.lower()], config, {}) == 0
        assert "(decimals 6, read from the chain)" in capsys.readouterr().out
        upper = "0x" + weth.address[2:].upper()
        assert await run_cli(["token", "add", "weth", upper, "--decimals", "18"], config, {}) == 0
        assert "(decimals 18, as given, matches the chain)" in capsys.readouterr().out
        argv = ["token", "add", "BTC", wbtc.address, "--allow-symbol-mismatch"]
        assert await run_cli(argv, config, {}) == 0
        captured = capsys.readouterr()
        assert "warning: SYMBOL: BTC, but symbol() of the contract at" in captured.err
        stored = {t.symbol: (t.address, t.decimals) for t in await db.tokens()}
    assert stored == {
        "BTC": (wbtc.address, 8),
        "USDC": (usdc.address, 6),
        "weth": (weth.address, 18),
    }


async def test_the_daemon_holds_back_a_portfolio_whose_token_decimals_are_wrong(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
) -> None:
    """Finding: token decimals were never checked against the chain, so a wrong ``--decimals``
    scaled a valuation by 10^k. A row registered before `token add` checked (WBTC with 18
    decimals; the chain says 8), with delegations signed to match it, so only the chain can
    tell: at start the daemon reads every token's decimals() in one batch, holds back the
    portfolio holding WBTC with the reason, and keeps trading the other."""
    with trio.fail_after(60):
        for token in devnet.tokens:
            await db.add_token(
                token.symbol,
                token.address,
                chain_id=devnet.chain_id,
                decimals=18 if token.symbol == "WBTC" else token.decimals,
                is_quote=token.symbol == devnet.quote_symbol,
                price_feed=devnet.feeds[token.symbol],
            )
        # What the registry says, as the owner's guard terms would have said it.
        misregistered = attrs.evolve(
            devnet,
            tokens=tuple(
                DevnetToken(t.symbol, t.address, 18) if t.symbol == "WBTC" else t
                for t in devnet.tokens
            ),
        )
        for name, account, targets in (
            ("good", devnet.accounts[0], {"USDC": "0.5", "WETH": "0.5"}),
            ("wrong-decimals", devnet.accounts[1], {"USDC": "0.5", "WBTC": "0.5"}),
        ):
            signed = guarded_delegations(misregistered, account, list(targets))
            await db.add_portfolio(
                name,
                account.address,
                chain_id=devnet.chain_id,
                targets={symbol: Decimal(weight) for symbol, weight in targets.items()},
                delegation=[d.to_json() for d in signed],
            )
        async with running_daemon(devnet, db_config) as daemon:
            await wait_for(lambda: evaluated(daemon, "good", 2), "good's evaluations")
            reason = daemon.portfolios.invalid.get("wrong-decimals", "")
            actors = set(daemon.supervisor.actors)
    assert actors == {"good"}
    assert "token WBTC is registered with 18 decimals but its decimals() on chain is 8" in reason
    assert "good" not in daemon.portfolios.invalid
