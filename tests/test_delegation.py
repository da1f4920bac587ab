"""Delegations: hashing against known implementations, least authority against the real enforcers.

The on-chain tests redeem through the real DelegationManager v1.3.0 on a HybridDeleGator account:
the allowed approve+swap works, and each thing a stolen daemon key might try reverts.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from fixtures_chain import send_call

from daemon import exitcodes
from daemon.abi import encode_call
from daemon.address import to_address
from daemon.amm import deadline_from
from daemon.authority import (
    least_authority_problems,
    nonce_problems,
)
from daemon.chain import ChainClient
from daemon.cli.delegation import GuardEntry, register
from daemon.config import Config, DelegationConfig, GuardConfig, Secret, Secrets
from daemon.delegation import (
    ROOT_AUTHORITY,
    Caveat,
    Delegation,
    DelegationDomain,
    DelegationFormatError,
    Execution,
    PortfolioDelegations,
    allowed_calldata_terms,
    allowed_methods_terms,
    allowed_targets_terms,
    build_portfolio_delegations,
    current_nonce,
    decode_nonce,
    decode_timestamp,
    dump_delegation_file,
    encode_redeem_delegations,
    nonce_terms,
    parse_delegation_file,
    recover_signer,
    sign_delegation,
    signature_is_valid_on_chain,
    timestamp_terms,
    value_lte_terms,
)
from daemon.devtools.devnet_anvil import evm_increase_time, evm_mine, set_eth_balance
from daemon.devtools.devnet_records import Devnet, SmartAccount, devnet_key
from daemon.guard import GuardTerms, GuardToken, guard_caveat, usd
from daemon.txbuild import Call, DelegationMode, SwapLeg
from daemon.uniswap import UniswapV2, encode_approve

pytestmark = pytest.mark.chain

ENFORCERS = DelegationConfig()
ACCOUNT = "0x1111111111111111111111111111111111111111"
DELEGATE = "0x2222222222222222222222222222222222222222"
ROUTER = "0x3333333333333333333333333333333333333333"
TOKENS = [
    "0x4444444444444444444444444444444444444444",
    "0x5555555555555555555555555555555555555555",
]
OWNER_KEY = Secret("0x" + keccak(text="test owner").hex())


GUARD = GuardConfig(enforcer="0x6666666666666666666666666666666666666666")
QUOTE = "0x7777777777777777777777777777777777777777"
FEEDS = {
    TOKENS[0]: "0x8888888888888888888888888888888888888881",
    TOKENS[1]: "0x8888888888888888888888888888888888888882",
    QUOTE: "0x8888888888888888888888888888888888888883",
}
NOW = 1_700_000_000


def guard_terms_for(**overrides: Any) -> GuardTerms:
    fields: dict[str, Any] = {
        "tokens": tuple(GuardToken(token, feed, 18, 8) for token, feed in FEEDS.items()),
        "max_loss_bps": GUARD.max_loss_bps,
        "max_staleness": GUARD.max_staleness,
        "period": GUARD.period,
        "period_cap": usd(GUARD.period_cap_usd),
    }
    fields.update(overrides)
    return GuardTerms(**fields)


def built(
    salt: int = 42,
    *,
    terms: GuardTerms | None = None,
    guard: str | None = None,
    expires_at: int | None = NOW + 86_400,
    nonce: int | None = 0,
) -> PortfolioDelegations:
    return build_portfolio_delegations(
        account=ACCOUNT,
        delegate=DELEGATE,
        router=ROUTER,
        tokens=TOKENS,
        enforcers=ENFORCERS,
        salt=salt,
        guard=guard_caveat(guard or GUARD.enforcer, terms or guard_terms_for()),
        expires_at=expires_at,
        nonce=nonce,
    )


def problems_of(delegation: Delegation, **overrides: Any) -> list[str]:
    arguments: dict[str, Any] = {
        "account": ACCOUNT,
        "delegate": DELEGATE,
        "router": ROUTER,
        "enforcers": ENFORCERS,
        "guard": GUARD,
        "tokens": TOKENS,
        "guard_feeds": FEEDS,
        "token_decimals": dict.fromkeys(FEEDS, 18),
        "now": NOW,
    }
    arguments.update(overrides)
    signed = attrs.evolve(delegation, signature=delegation.signature or b"\x01" * 65)
    return least_authority_problems(signed, **arguments)


def eip712_digest(document: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=document)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


# --- pure -------------------------------------------------------------------------------------


def test_terms_layouts() -> None:
    assert allowed_targets_terms([ROUTER, ACCOUNT]) == bytes.fromhex(ROUTER[2:] + ACCOUNT[2:])
    assert allowed_methods_terms([bytes.fromhex("095ea7b3")]) == bytes.fromhex("095ea7b3")
    terms = allowed_calldata_terms(4, b"\xab" * 32)
    assert terms[:32] == (4).to_bytes(32, "big")
    assert terms[32:] == b"\xab" * 32


def test_built_delegations_pin_what_the_guard_does_not_check() -> None:
    delegations = built()
    approve_caveats = {c.enforcer: c.terms for c in delegations.approve.caveats}
    assert approve_caveats[ENFORCERS.allowed_methods] == bytes.fromhex("095ea7b3")
    assert approve_caveats[ENFORCERS.allowed_calldata] == (4).to_bytes(32, "big") + bytes(
        12
    ) + bytes.fromhex(ROUTER[2:])
    assert approve_caveats[ENFORCERS.value_lte] == bytes(32)
    swap_caveats = {c.enforcer: c.terms for c in delegations.swap.caveats}
    assert swap_caveats[ENFORCERS.allowed_targets] == bytes.fromhex(ROUTER[2:])
    # Method, recipient and ETH are the guard's own checks (test_guard.py attacks each on
    # chain): stock caveats for them would cost ~22 000 gas per swap and protect nothing.
    assert GUARD.enforcer in swap_caveats
    for redundant in (ENFORCERS.allowed_methods, ENFORCERS.allowed_calldata, ENFORCERS.value_lte):
        assert redundant not in swap_caveats
    for delegation in delegations.as_list():
        assert delegation.authority == ROOT_AUTHORITY
        assert problems_of(delegation) == []


def test_without_the_guard_the_swap_delegation_keeps_the_stock_pins() -> None:
    unguarded = build_portfolio_delegations(
        account=ACCOUNT,
        delegate=DELEGATE,
        router=ROUTER,
        tokens=TOKENS,
        enforcers=ENFORCERS,
        salt=1,
        expires_at=NOW + 86_400,
    )
    swap_caveats = {c.enforcer: c.terms for c in unguarded.swap.caveats}
    assert swap_caveats[ENFORCERS.allowed_methods] == bytes.fromhex("38ed1739")
    assert swap_caveats[ENFORCERS.allowed_calldata] == (100).to_bytes(32, "big") + bytes(
        12
    ) + bytes.fromhex(ACCOUNT[2:])
    assert swap_caveats[ENFORCERS.value_lte] == bytes(32)
    assert any("no oracle guard caveat" in p for p in problems_of(unguarded.swap))


def test_least_authority_flags_an_approve_without_its_spender_pin() -> None:
    approve = built().approve
    wide = attrs.evolve(
        approve,
        caveats=tuple(c for c in approve.caveats if c.enforcer != ENFORCERS.allowed_calldata),
        signature=b"\x01" * 65,
    )
    problems = problems_of(wide, tokens=None, guard_feeds=None, token_decimals=None)
    assert problems == ["approve: spender is not pinned to the router by AllowedCalldata"]


def test_a_swap_delegation_allowing_any_other_method_is_refused() -> None:
    swap = built().swap
    other = attrs.evolve(
        swap,
        caveats=(
            *swap.caveats,
            Caveat(ENFORCERS.allowed_methods, allowed_methods_terms([bytes.fromhex("a9059cbb")])),
        ),
    )
    assert any("AllowedMethods must allow exactly one of" in p for p in problems_of(other))


@pytest.mark.parametrize(
    ("make", "overrides", "message"),
    [
        (lambda: built().swap, {"delegate": ACCOUNT}, "delegate is"),
        (lambda: built().approve, {"account": DELEGATE}, "delegator is"),
        (
            lambda: attrs.evolve(
                built().swap,
                caveats=tuple(c for c in built().swap.caveats if c.enforcer != GUARD.enforcer),
            ),
            {},
            "swap: no oracle guard caveat",
        ),
        (lambda: built(guard=ACCOUNT).swap, {}, "swap: no oracle guard caveat"),
        (
            lambda: built(terms=guard_terms_for(max_loss_bps=101)).swap,
            {},
            "swap: guard max_loss_bps is 101, above the configured 100",
        ),
        (
            lambda: built(terms=guard_terms_for(max_staleness=100_000)).swap,
            {},
            "guard max_staleness is 100000 s",
        ),
        (
            lambda: built(terms=guard_terms_for(period_cap=usd(5_001))).swap,
            {},
            "guard period cap",
        ),
        (
            lambda: built(terms=guard_terms_for(tokens=guard_terms_for().tokens[:2])).swap,
            {},
            "guard tokens are not exactly the portfolio's tokens and the quote token (missing",
        ),
        (
            lambda: built().swap,
            {"guard_feeds": {**FEEDS, QUOTE: ACCOUNT}},
            f"guard feed of {QUOTE} is",
        ),
        (
            lambda: built().swap,
            {"token_decimals": {**dict.fromkeys(FEEDS, 18), QUOTE: 6}},
            f"guard decimals of {QUOTE} are 18, the token has 6",
        ),
        (lambda: built(expires_at=None).approve, {}, "approve: no expiry"),
        (lambda: built(expires_at=None).swap, {}, "swap: no expiry"),
        (lambda: built(expires_at=None).approve, {}, "approve: no ValueLteEnforcer(0)"),
        (lambda: built().approve, {"now": NOW + 86_400}, "approve: expired at"),
        (lambda: built(nonce=None).approve, {}, "approve: no one-step revocation (NonceEnforcer)"),
        (lambda: built(nonce=None).swap, {}, "swap: no one-step revocation (NonceEnforcer)"),
        (lambda: built().swap, {"guard": GuardConfig()}, "guard.enforcer is not configured"),
    ],
)
def test_least_authority_refuses_weaker_delegations(
    make: Any, overrides: dict[str, Any], message: str
) -> None:
    problems = problems_of(make(), **overrides)
    assert any(message in problem for problem in problems), problems


def test_value_lte_must_be_zero() -> None:
    approve = built().approve
    loose = attrs.evolve(
        approve,
        caveats=tuple(
            Caveat(c.enforcer, value_lte_terms(10**18)) if c.enforcer == ENFORCERS.value_lte else c
            for c in approve.caveats
        ),
    )
    assert "approve: ValueLte allows 1000000000000000000 wei per call, expected 0" in (
        problems_of(loose)
    )


def test_built_delegations_carry_the_nonce_on_both() -> None:
    for delegation in built(nonce=7).as_list():
        (terms,) = [c.terms for c in delegation.caveats if c.enforcer == ENFORCERS.nonce]
        assert terms == (7).to_bytes(32, "big") == nonce_terms(7)
        assert decode_nonce(terms) == 7
    assert ENFORCERS.nonce == "0xDE4f2FAC4B3D87A1d9953Ca5FC09FCa7F366254f"  # v1.3.0, CREATE2


def test_expiry_terms_layout() -> None:
    terms = timestamp_terms(expires_at=NOW)
    assert terms == bytes(16) + NOW.to_bytes(16, "big")
    assert decode_timestamp(terms) == (0, NOW)


def test_hash_matches_eth_account_typed_data() -> None:
    domain = DelegationDomain(chain_id=31337, manager=ENFORCERS.manager)
    for delegation in built(salt=2**200 + 7).as_list():
        document = delegation.typed_data(domain)
        document["message"]["salt"] = delegation.salt
        assert delegation.digest(domain) == eip712_digest(document)


def test_sign_and_recover() -> None:
    domain = DelegationDomain(chain_id=1, manager=ENFORCERS.manager)
    signed = sign_delegation(built().swap, domain, OWNER_KEY)
    assert len(signed.signature) == 65
    assert recover_signer(signed, domain) == Account.from_key(OWNER_KEY.reveal()).address
    other_chain = DelegationDomain(chain_id=2, manager=ENFORCERS.manager)
    assert recover_signer(signed, other_chain) != Account.from_key(OWNER_KEY.reveal()).address


def test_delegation_file_round_trip() -> None:
    domain = DelegationDomain(chain_id=1, manager=ENFORCERS.manager)
    signed = [sign_delegation(d, domain, OWNER_KEY) for d in built().as_list()]
    assert parse_delegation_file(dump_delegation_file(signed)) == signed


def _file_with(mutate: Any) -> str:
    domain = DelegationDomain(chain_id=1, manager=ENFORCERS.manager)
    document = json.loads(dump_delegation_file([sign_delegation(built().swap, domain, OWNER_KEY)]))
    mutate(document)
    return json.dumps(document)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("{}", "non-empty JSON array"),
        ("[]", "non-empty JSON array"),
        (_file_with(lambda d: d[0].pop("delegate")), "[0]: missing field 'delegate'"),
        (_file_with(lambda d: d[0].update(delegator="0x12")), "[0].delegator: must be a 0x"),
        (_file_with(lambda d: d[0].update(authority="0xff")), "[0].authority: must be 32 bytes"),
        (
            _file_with(lambda d: d[0]["caveats"][1].update(terms="zz")),
            "[0].caveats[1].terms: must be a 0x-prefixed hex string",
        ),
        (_file_with(lambda d: d[0].update(salt="abc")), "[0].salt: not a decimal or 0x-hex"),
        (_file_with(lambda d: d[0].update(salt="0x10")), None),
        (_file_with(lambda d: d[0].update(salt="16")), None),
        (_file_with(lambda d: d[0].update(signature="0x")), "[0].signature: empty"),
        (_file_with(lambda d: d[0].update(caveats={})), "[0].caveats: must be an array"),
    ],
)
def test_delegation_file_errors_name_the_field(text: str, message: str | None) -> None:
    if message is None:
        assert parse_delegation_file(text)[0].salt == 16
        return
    with pytest.raises(DelegationFormatError) as raised:
        parse_delegation_file(text)
    assert message in str(raised.value)


def test_redeem_encoding_layout() -> None:
    delegation = attrs.evolve(built().approve, signature=b"\x01" * 65)
    execution = Execution(TOKENS[0], encode_approve(ROUTER, 5))
    data = encode_redeem_delegations([(delegation, execution)])
    assert data[:4] == keccak(text="redeemDelegations(bytes[],bytes32[],bytes[])")[:4]
    packed = execution.encode_single()
    assert packed == bytes.fromhex(TOKENS[0][2:]) + (0).to_bytes(32, "big") + execution.calldata
    assert packed in data


# --- on chain ---------------------------------------------------------------------------------


def domain_of(devnet: Devnet) -> DelegationDomain:
    return DelegationDomain(chain_id=devnet.chain_id, manager=devnet.manager)


def signed_for(devnet: Devnet, account: SmartAccount) -> PortfolioDelegations:
    delegations = build_portfolio_delegations(
        account=account.address,
        delegate=devnet.signer,
        router=devnet.router,
        tokens=[token.address for token in devnet.tokens],
        enforcers=devnet.delegation_config(),
        salt=1,
    )
    domain = domain_of(devnet)
    return PortfolioDelegations(
        approve=sign_delegation(delegations.approve, domain, account.owner_key),
        swap=sign_delegation(delegations.swap, domain, account.owner_key),
    )


async def usdc_to_weth_leg(
    chain: ChainClient, devnet: Devnet, amount_in: int
) -> tuple[SwapLeg, int]:
    uniswap = UniswapV2(chain, devnet.router, devnet.quote.address)
    quote = await uniswap.quote(devnet.token("USDC").address, devnet.weth, amount_in)
    block = await chain.latest_block()
    leg = SwapLeg(
        token_in=devnet.token("USDC").address,
        token_out=devnet.weth,
        amount_in=amount_in,
        amount_out_min=quote.amount_out_min(Decimal("0.01")),
        path=quote.path,
        deadline=deadline_from(block.timestamp, 300),
    )
    return leg, quote.amount_out


async def test_manager_agrees_on_hashes(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        delegation = signed_for(devnet, devnet.accounts[0]).swap
        raw = await chain.call(
            devnet.manager,
            encode_call(
                "getDelegationHash((address,address,bytes32,(address,bytes,bytes)[],uint256,bytes))",
                delegation.abi_tuple(),
            ),
        )
        assert raw == delegation.struct_hash()
        domain_hash = await chain.call(devnet.manager, encode_call("getDomainHash()"))
        assert domain_hash == domain_of(devnet).separator()


async def test_signature_checked_by_the_smart_account(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(10):
        delegation = signed_for(devnet, devnet.accounts[0]).approve
        domain = domain_of(devnet)
        assert await signature_is_valid_on_chain(chain, delegation, domain)
        tampered = attrs.evolve(delegation, salt=delegation.salt + 1)
        assert not await signature_is_valid_on_chain(chain, tampered, domain)
        # Signed by another account's owner: not valid for this account.
        foreign = sign_delegation(delegation, domain, devnet.accounts[1].owner_key)
        assert not await signature_is_valid_on_chain(chain, foreign, domain)


async def test_delegated_approve_and_swap_moves_balances_as_quoted(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        account = devnet.accounts[0]
        usdc, weth = devnet.token("USDC").address, devnet.weth
        mode = DelegationMode.from_signed(
            signed_for(devnet, account).as_list(),
            router=devnet.router,
            enforcers=devnet.delegation_config(),
        )
        assert mode.holder == account.address
        leg, quoted_out = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        before = await chain.balances(account.address, [usdc, weth])
        (call,) = mode.calls([leg])
        receipt = await send_call(chain, devnet.signer_key, call)
        assert receipt.succeeded
        after = await chain.balances(account.address, [usdc, weth])
        assert before[usdc] - after[usdc] == leg.amount_in
        assert after[weth] - before[weth] == quoted_out


async def attempt(
    chain: ChainClient, devnet: Devnet, redemptions: list[tuple[Delegation, Execution]], key: Secret
) -> str:
    """Send a redeemDelegations for real (fixed gas, no estimate); the revert reason."""
    account = devnet.accounts[0]
    tokens = [token.address for token in devnet.tokens]
    before = await chain.balances(account.address, tokens)
    call = Call(to=devnet.manager, data=encode_redeem_delegations(redemptions))
    receipt = await send_call(chain, key, call, gas=2_000_000)
    assert not receipt.succeeded
    assert await chain.balances(account.address, tokens) == before
    reverted = await chain.revert_reason_of(receipt.transaction_hash)
    assert reverted is not None
    return reverted.reason


ATTACKER = "0x000000000000000000000000000000000000dEaD"


async def test_delegation_cannot_transfer_tokens(chain: ChainClient, devnet: Devnet) -> None:
    with trio.fail_after(20):
        delegations = signed_for(devnet, devnet.accounts[0])
        transfer = encode_call("transfer(address,uint256)", ATTACKER, 10**6)
        reason = await attempt(
            chain,
            devnet,
            [(delegations.approve, Execution(devnet.token("USDC").address, transfer))],
            devnet.signer_key,
        )
        assert reason == "AllowedMethodsEnforcer:method-not-allowed"


async def test_delegation_cannot_approve_another_spender(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        delegations = signed_for(devnet, devnet.accounts[0])
        approve = encode_approve(ATTACKER, 2**256 - 1)
        reason = await attempt(
            chain,
            devnet,
            [(delegations.approve, Execution(devnet.token("USDC").address, approve))],
            devnet.signer_key,
        )
        assert reason == "AllowedCalldataEnforcer:invalid-calldata"


async def test_delegation_cannot_swap_to_another_recipient(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        account = devnet.accounts[0]
        delegations = signed_for(devnet, account)
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        swap = encode_call(
            "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)",
            leg.amount_in,
            leg.amount_out_min,
            list(leg.path),
            ATTACKER,
            leg.deadline,
        )
        reason = await attempt(
            chain,
            devnet,
            [
                (
                    delegations.approve,
                    Execution(leg.token_in, encode_approve(devnet.router, 10**9)),
                ),
                (delegations.swap, Execution(devnet.router, swap)),
            ],
            devnet.signer_key,
        )
        assert reason == "AllowedCalldataEnforcer:invalid-calldata"


async def test_delegation_cannot_be_redeemed_by_another_key(
    chain: ChainClient, devnet: Devnet
) -> None:
    with trio.fail_after(20):
        thief_key = devnet_key("thief")
        await set_eth_balance(chain, Account.from_key(thief_key.reveal()).address, 10**20)
        mode = DelegationMode.from_signed(
            signed_for(devnet, devnet.accounts[0]).as_list(),
            router=devnet.router,
            enforcers=devnet.delegation_config(),
        )
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        (call,) = mode.calls([leg])
        redemptions_reason = await attempt_call(chain, devnet, call, thief_key)
        assert redemptions_reason == "InvalidDelegate()"


async def attempt_call(chain: ChainClient, devnet: Devnet, call: Call, key: Secret) -> str:
    account = devnet.accounts[0]
    tokens = [token.address for token in devnet.tokens]
    before = await chain.balances(account.address, tokens)
    receipt = await send_call(chain, key, call, gas=2_000_000)
    assert not receipt.succeeded
    assert await chain.balances(account.address, tokens) == before
    reverted = await chain.revert_reason_of(receipt.transaction_hash)
    assert reverted is not None
    return reverted.reason


# --- the CLI ----------------------------------------------------------------------------------


DEVNET_REGISTRY: list[GuardEntry] = []


def run_cli(argv: list[str], config: Config, lookup: dict[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="driftd")
    register(
        parser.add_subparsers(dest="command"),
        token_lookup=lookup.get,
        registry=lambda config: DEVNET_REGISTRY,
    )
    args = parser.parse_args(argv)
    result: int = args.func(args, config)
    return result


def devnet_config(devnet: Devnet) -> Config:
    return Config(
        chain=devnet.chain_config(),
        delegation=devnet.delegation_config(),
        guard=devnet.guard_config(),
        secrets=Secrets(signer_key=devnet.signer_key),
    )


def test_cli_build_sign_in_wallet_then_verify(
    devnet: Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account = devnet.accounts[1]
    config = devnet_config(devnet)
    lookup = {"USDC": devnet.token("USDC").address}
    DEVNET_REGISTRY[:] = [
        GuardEntry(t.address, t.decimals, devnet.feeds[t.symbol], t.symbol == devnet.quote_symbol)
        for t in devnet.tokens
    ]
    argv = ["delegation", "build", "--account", account.address, "--token", "USDC"]
    argv += ["--token", f"WETH={devnet.weth}", "--token", f"WBTC={devnet.token('WBTC').address}"]
    assert run_cli(argv, config, lookup) == exitcodes.OK
    documents = json.loads(capsys.readouterr().out)
    assert len(documents) == 2
    assert all(d["domain"]["verifyingContract"] == devnet.manager for d in documents)

    # The owner signs each document in a wallet (eth_signTypedData_v4), then writes the file.
    signed = []
    for document in documents:
        message = document["message"]
        wallet_signature = Account.sign_typed_data(
            account.owner_key.reveal(), full_message=document
        ).signature
        signed.append(
            {
                **message,
                "caveats": [{**caveat, "args": "0x"} for caveat in message["caveats"]],
                "signature": "0x" + bytes(wallet_signature).hex(),
            }
        )
    path = tmp_path / "delegations.json"
    path.write_text(json.dumps(signed))
    verify = ["delegation", "verify", str(path), "--account", account.address]
    assert run_cli([*verify, "--token", "USDC"], config, lookup) == exitcodes.DATA_ERROR
    report = json.loads(capsys.readouterr().out)
    assert "targets beyond the portfolio's tokens" in report["delegations"][0]["problems"][0]
    assert run_cli(verify, config, lookup) == exitcodes.OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"]
    assert [d["kind"] for d in report["delegations"]] == ["approve", "swap"]

    # Signed by the wrong owner: the smart account rejects it.
    signed[1]["signature"] = (
        "0x"
        + bytes(
            Account.sign_typed_data(
                devnet.accounts[0].owner_key.reveal(), full_message=documents[1]
            ).signature
        ).hex()
    )
    path.write_text(json.dumps(signed))
    assert run_cli(verify, config, lookup) == exitcodes.DATA_ERROR
    report = json.loads(capsys.readouterr().out)
    assert report["delegations"][1]["problems"] == [
        "signature rejected by the smart account (ERC-1271)"
    ]


def test_cli_build_unknown_symbol_is_a_usage_error(
    devnet: Devnet, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["delegation", "build", "--account", devnet.accounts[0].address, "--token", "DOGE"]
    assert run_cli(argv, devnet_config(devnet), {}) == exitcodes.USAGE
    assert "--token DOGE: unknown token" in capsys.readouterr().err


def test_cli_verify_bad_file_exits_65(
    devnet: Devnet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"delegate": "0x1"}]')
    argv = ["delegation", "verify", str(path), "--account", devnet.accounts[0].address]
    assert run_cli(argv, devnet_config(devnet), {}) == exitcodes.DATA_ERROR
    assert "[0]: missing field 'caveats'" in capsys.readouterr().err


def test_caveat_addresses_are_checksummed() -> None:
    caveat = Caveat(ENFORCERS.allowed_targets.lower(), b"")
    assert caveat.enforcer == to_address(ENFORCERS.allowed_targets)


# --- one-step revocation (NonceEnforcer) --------------------------------------------------------


async def test_incrementing_the_nonce_revokes_every_delegation(
    chain: ChainClient, devnet: Devnet, tmp_path: Path
) -> None:
    """A thief holding the daemon's key and both delegations the owner signed: after the owner's
    one ``incrementNonce``, every redemption reverts and verification refuses them."""
    from daemon_harness import GUARD_DOCUMENT, guarded_delegations, owner_increments_nonce

    with trio.fail_after(60):
        account = devnet.accounts[0]
        enforcers = devnet.delegation_config()
        assert await current_nonce(chain, enforcers, account.address) == 0
        approve, swap = guarded_delegations(devnet, account, ["USDC", "WETH"], nonce=0)
        for delegation in (approve, swap):
            assert await nonce_problems(chain, delegation, enforcers) == []
        mode = DelegationMode.from_signed(
            [approve, swap], router=devnet.router, enforcers=enforcers
        )
        # Before: the daemon's legitimate trade goes through.
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        (call,) = mode.calls([leg])
        assert (await send_call(chain, devnet.signer_key, call)).succeeded

        await owner_increments_nonce(chain, devnet, account)
        assert await current_nonce(chain, enforcers, account.address) == 1

        # After: the same trade, an approve alone and a swap alone all revert on the nonce.
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        (call,) = mode.calls([leg])
        assert await attempt_call(chain, devnet, call, devnet.signer_key) == (
            "NonceEnforcer:invalid-nonce"
        )
        usdc = devnet.token("USDC").address
        approve_alone = [(approve, Execution(usdc, encode_approve(devnet.router, 10**9)))]
        reason = await attempt(chain, devnet, approve_alone, devnet.signer_key)
        assert reason == "NonceEnforcer:invalid-nonce"
        swap_call = encode_call(
            "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)",
            leg.amount_in,
            leg.amount_out_min,
            list(leg.path),
            account.address,
            leg.deadline,
        )
        reason = await attempt(
            chain, devnet, [(swap, Execution(devnet.router, swap_call))], devnet.signer_key
        )
        assert reason == "NonceEnforcer:invalid-nonce"

        # Verification refuses them (the CLI's on-chain check)...
        revoked = "revoked: the owner incremented the nonce (signed at nonce 0, current 1)"
        for delegation in (approve, swap):
            assert await nonce_problems(chain, delegation, enforcers) == [revoked]
        path = tmp_path / "revoked.json"
        path.write_text(dump_delegation_file([approve, swap]))
        verify = ["delegation", "verify", str(path), "--account", account.address]
        out = tmp_path / "out.json"
        # The harness signs with its test bounds ([guard] as its daemons are configured).
        config = attrs.evolve(
            devnet_config(devnet), guard=devnet.guard_config(GuardConfig(**GUARD_DOCUMENT))
        )

        def verify_cli() -> int:
            import contextlib

            with out.open("w") as sink, contextlib.redirect_stdout(sink):
                return run_cli(verify, config, {})

        assert await trio.to_thread.run_sync(verify_cli) == exitcodes.DATA_ERROR
        report = json.loads(out.read_text())
        assert [d["problems"] for d in report["delegations"]] == [[revoked], [revoked]]

        # ... and delegations re-signed at the new nonce work again.
        fresh = guarded_delegations(devnet, account, ["USDC", "WETH"], nonce=1)
        mode = DelegationMode.from_signed(fresh, router=devnet.router, enforcers=enforcers)
        (call,) = mode.calls([leg])
        assert (await send_call(chain, devnet.signer_key, call)).succeeded


async def test_expired_delegations_cannot_be_redeemed(chain: ChainClient, devnet: Devnet) -> None:
    """A thief holding the daemon's key and the owner's delegations: once the TimestampEnforcer
    expiry (chain time) has passed, the redemption that worked before reverts."""
    from daemon_harness import guarded_delegations

    with trio.fail_after(60):
        account = devnet.accounts[0]
        enforcers = devnet.delegation_config()
        expires_at = (await chain.latest_block()).timestamp + 600
        approve, swap = guarded_delegations(
            devnet, account, ["USDC", "WETH"], nonce=0, expires_at=expires_at
        )
        mode = DelegationMode.from_signed(
            [approve, swap], router=devnet.router, enforcers=enforcers
        )
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        (call,) = mode.calls([leg])
        assert (await send_call(chain, devnet.signer_key, call)).succeeded
        await evm_increase_time(chain, 1_200)
        await evm_mine(chain)
        leg, _ = await usdc_to_weth_leg(chain, devnet, 1_000 * 10**6)
        (call,) = mode.calls([leg])
        reason = await attempt_call(chain, devnet, call, devnet.signer_key)
        assert reason.startswith("TimestampEnforcer:"), reason
