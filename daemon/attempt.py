"""What a rebalance attempt is, apart from carrying it out: its plan and its truthful outcome.

Pure: no I/O, no clock. :class:`Prepared` is a request turned into swap legs at fresh quotes;
:func:`quote_deviation` compares a pool's price with the plan's; :func:`attempt_outcome` decides
an attempt's terminal status from its recorded intents alone — the same function for a live
attempt and for one settled after a restart — and :func:`actual_outputs` reads what each leg
received from the receipts.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final

import attrs
from eth_utils.crypto import keccak

from daemon import db as dbm
from daemon.address import to_address
from daemon.amm import mid_price
from daemon.chain import Receipt
from daemon.drift import Leg
from daemon.messages import Token
from daemon.packing import gas_share
from daemon.transactions_values import FeeAboveCeiling, SignerBlocked
from daemon.txbuild import Call, ExecutionMode, SwapLeg

TRANSFER_TOPIC: Final = keccak(text="Transfer(address,address,uint256)")


class RebalanceAborted(Exception):
    """The attempt sends no (further) transaction; the message says why."""


@attrs.define
class Prepared:
    """A request turned into swap legs at fresh quotes, before anything is sent."""

    mode: ExecutionMode
    deadline: int
    """The swaps' deadline (chain time)."""
    block_timestamp: int
    """The head the quotes were made at (the oracle guard judges feeds' ages against it)."""
    swap_legs: list[SwapLeg] = attrs.Factory(list)
    expected: list[dict[str, Any]] = attrs.Factory(list)
    """Per sent leg, what was quoted (``rebalance_log.expected_outputs``)."""
    rejected: list[str] = attrs.Factory(list)
    """Per leg left out, why (price impact, quote deviation)."""
    allowances: dict[str, int] | None = None
    """The holder's allowances to the router by token (None: unknown)."""

    @property
    def swap_path(self) -> list[list[str]]:
        return [list(leg.path) for leg in self.swap_legs]


@attrs.frozen
class QuoteDeviation:
    """How far the pools' mid price is from the price the plan was made with."""

    planned: Fraction
    """``buy`` per ``sell`` (whole tokens) at the plan's prices."""
    pool: Fraction
    """``buy`` per ``sell`` (whole tokens) at the pools' mid price along the route."""

    @property
    def fraction(self) -> Decimal:
        """``|pool / planned − 1|`` (1 if the plan priced the leg at nothing)."""
        if self.planned == 0:
            return Decimal(1)
        ratio = abs(self.pool / self.planned - 1)
        return Decimal(ratio.numerator) / Decimal(ratio.denominator)

    def describe(self, leg: Leg, token_in: Token, token_out: Token, limit: Decimal) -> str:
        def rate(value: Fraction) -> str:
            return f"{Decimal(value.numerator) / Decimal(value.denominator):.6g}"

        return (
            f"{leg.sell}->{leg.buy}: the pool prices 1 {token_in.symbol} at "
            f"{rate(self.pool)} {token_out.symbol}, the plan at {rate(self.planned)} "
            f"{token_out.symbol}: {self.fraction:.2%} apart, above the "
            f"max_quote_deviation {limit:%}"
        )


def quote_deviation(
    leg: Leg, reserves: Sequence[tuple[int, int]], token_in: Token, token_out: Token
) -> QuoteDeviation:
    """Compare the pools' mid price (before fees and impact, which are capped separately) with
    the plan's ``expected_out / amount_in``: a pool pushed off-market passes the impact cap,
    because impact is measured against the same pool."""
    scale = Fraction(10**token_in.decimals, 10**token_out.decimals)
    return QuoteDeviation(
        planned=Fraction(leg.expected_out, leg.amount_in) * scale,
        pool=mid_price(reserves) * scale,
    )


def purpose(call: Call) -> dbm.IntentPurpose:
    """The intent purpose of a call of the plan."""
    return "approve" if call.approve else "swap"


def attempt_outcome(
    planned_txs: int | None,
    planned_swap_txs: int | None,
    intents: Sequence[dbm.TxIntent],
    *,
    stopped: str | None = None,
) -> dbm.FinishedAttempt:
    """The truthful terminal status of an attempt, from its recorded intents alone.

    SUCCESS iff every planned transaction was mined successfully; PARTIAL iff some swap was and
    not every planned transaction; FAILED otherwise. Gas is the sum over every mined version
    (cancels included: they cost gas too). ``stopped`` says why the attempt sent no more.
    """
    mined = [i for i in intents if i.status in ("CONFIRMED", "REVERTED")]
    succeeded = {i.call_index for i in mined if i.status == "CONFIRMED" and i.purpose != "cancel"}
    swaps_done = sum(1 for i in mined if i.status == "CONFIRMED" and i.purpose == "swap")
    gas_used = sum(i.gas_used or 0 for i in mined)
    gas_wei = sum((i.gas_used or 0) * (i.effective_gas_price or 0) for i in mined)
    last_hash = next(
        (i.tx_hash for i in reversed(mined) if i.purpose == "swap"),
        mined[-1].tx_hash if mined else None,
    )
    gas = {"gas_used": gas_used, "gas_cost_wei": gas_wei} if mined else {}
    problems: list[str] = []
    if any(i.status == "REVERTED" and i.purpose != "cancel" for i in mined):
        problems.append("transaction reverted")
    if any(i.status == "CONFIRMED" and i.purpose == "cancel" for i in mined):
        problems.append("cancelled with a 0-value transaction at the same nonce")
    if any(i.status == "DROPPED" and i.error and "not ours" in i.error for i in intents):
        problems.append("a nonce was consumed by a transaction that is not ours")
    if stopped is not None:
        problems.append(stopped)
    if planned_txs is not None and len(succeeded) == planned_txs and planned_txs > 0:
        return dbm.FinishedAttempt(status="SUCCESS", transaction_hash=last_hash, **gas)  # type: ignore[arg-type]
    if planned_txs is None and mined:
        problems.append("recorded before attempts stored their plan: check the swaps on chain")
    if swaps_done > 0:
        done = f"{swaps_done} of {planned_swap_txs if planned_swap_txs is not None else '?'}"
        return dbm.FinishedAttempt(
            status="PARTIAL",
            transaction_hash=last_hash,
            error="; ".join([f"only {done} swap transactions were mined", *problems]),
            **gas,  # type: ignore[arg-type]
        )
    if not mined and not problems:
        problems.append("interrupted before any transaction was mined; nothing was traded")
    return dbm.FinishedAttempt(
        status="FAILED",
        transaction_hash=last_hash,
        error="; ".join(problems) or "no swap was mined; nothing was traded",
        **gas,  # type: ignore[arg-type]
    )


def own_intents(intents: Sequence[dbm.TxIntent], rebalance_id: int) -> list[dbm.TxIntent]:
    """An attempt's intents as :func:`attempt_outcome` should count them: a packed transaction
    is charged only the attempt's share of its gas (its executions among the pack's)."""
    out: list[dbm.TxIntent] = []
    for intent in intents:
        ids = intent.packed_rebalance_ids
        if ids and rebalance_id in ids and intent.gas_used is not None:
            share = gas_share(intent.gas_used, intent.packed_weights, ids.index(rebalance_id))
            intent = attrs.evolve(intent, gas_used=share)
        out.append(intent)
    return out


def actual_outputs(
    receipts: Sequence[Receipt], legs: Sequence[SwapLeg], holder: str
) -> list[int | None]:
    """Per leg, the amount of ``token_out`` transferred to ``holder`` — read from the receipts'
    Transfer events in execution order, so two legs buying the same token are told apart."""
    holder_topic = bytes(12) + bytes.fromhex(to_address(holder)[2:])
    transfers = [
        (to_address(log.address), int.from_bytes(log.data[:32], "big"))
        for receipt in receipts
        if receipt.succeeded
        for log in receipt.logs
        if len(log.topics) == 3
        and log.topics[0] == TRANSFER_TOPIC
        and log.topics[2] == holder_topic
    ]
    outputs: list[int | None] = []
    position = 0
    for leg in legs:
        found = None
        while position < len(transfers):
            token, amount = transfers[position]
            position += 1
            if token == leg.token_out:
                found = amount
                break
        outputs.append(found)
    return outputs


def planned_leg(leg: Leg) -> dict[str, Any]:
    """A leg of the engine's plan as ``rebalance_log.token_amounts`` records it."""
    return {
        "sell": leg.sell,
        "buy": leg.buy,
        "usd": str(leg.usd),
        "amount_in": str(leg.amount_in),
        "expected_out_at_prices": str(leg.expected_out),
        "capped": leg.capped,
    }


def error_text(exc: BaseException) -> str:
    """Why an attempt stopped, for its row: our own refusals as they are, others typed."""
    if isinstance(exc, RebalanceAborted | SignerBlocked | FeeAboveCeiling):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
