"""In-memory fakes of what :mod:`daemon.transactions` talks to: a node (mempool + chain of one
signer) and the ``tx_intent`` store, with scriptable faults; and of what the executor reads
besides (:class:`FakeChainClient`, :class:`FakePools`, sharing the node's head).

Both append to one shared event log (``("recorded", hash)``, ``("send", hash)``,
``("accepted", hash)``, ``("mined", hash)``, ``("status", hash, status)``) so tests can assert
the order in which things happened. The node never decodes a raw transaction: the store tells
it about every version it records (``on_record``), and ``send(raw)`` looks the bytes up there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio
from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from daemon.abi import function_selector, hex_of
from daemon.address import to_address
from daemon.amm import get_amounts_out
from daemon.chain import Block, FeeData, Receipt
from daemon.chain_errors import ChainError, Reverted, RpcError, RpcTransportError
from daemon.db import (
    LIVE_INTENT_STATUSES,
    ConstraintViolation,
    DatabaseUnavailable,
    IntentStatus,
    NewTxIntent,
    NotFound,
    TxIntent,
    TxReceipt,
)
from daemon.transactions import CANCEL_GAS
from daemon.transactions_values import NodeView
from daemon.uniswap import NoRoute, Quote

GWEI = 10**9
CHAIN_ID = 31337
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
UNSETTLED: frozenset[str] = frozenset({"SIGNED", "BROADCAST", "REPLACED"})

Event = tuple[str, ...]


# --- the store ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class FakeStore:
    """:class:`daemon.transactions.IntentStore` with the semantics of :class:`daemon.db.Database`.

    ``outage``: every call raises :class:`DatabaseUnavailable` (nothing is written).
    ``lose_reply``: method names whose next call commits and *then* raises (a lost reply)."""

    events: list[Event] = attrs.Factory(list)
    on_record: Callable[[TxIntent], None] = lambda intent: None
    outage: bool = False
    lose_reply: set[str] = attrs.Factory(set)
    rows: dict[int, TxIntent] = attrs.Factory(dict)
    calls: list[str] = attrs.Factory(list)
    failed_calls: list[str] = attrs.Factory(list)
    _next_id: int = 1

    # -- helpers for tests --

    def versions(self, nonce: int) -> list[TxIntent]:
        return sorted((r for r in self.rows.values() if r.nonce == nonce), key=lambda r: r.id)

    def by_hash(self, tx_hash: str) -> TxIntent:
        return next(r for r in self.rows.values() if r.tx_hash == tx_hash)

    def live(self) -> list[TxIntent]:
        return sorted((r for r in self.rows.values() if r.live), key=lambda r: (r.nonce, r.id))

    def status_history(self, tx_hash: str) -> list[str]:
        return [e[2] for e in self.events if e[0] == "status" and e[1] == tx_hash]

    # -- plumbing --

    async def _enter(self, method: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(method)
        if self.outage:
            self.failed_calls.append(method)
            raise DatabaseUnavailable(f"fake outage: {method} could not reach the server")

    def _committed(self, method: str) -> None:
        if method in self.lose_reply:
            self.lose_reply.discard(method)
            self.failed_calls.append(method)
            raise DatabaseUnavailable(f"connection lost after {method} committed")

    def _set(self, row: TxIntent, **changes: Any) -> TxIntent:
        new = attrs.evolve(row, **changes)
        self.rows[row.id] = new
        if "status" in changes and changes["status"] != row.status:
            self.events.append(("status", row.tx_hash, changes["status"]))
        return new

    @staticmethod
    def _same_scope(row: TxIntent, chain_id: int, signer: str) -> bool:
        return row.chain_id == chain_id and row.signer.lower() == signer.lower()

    def _insert(self, new: NewTxIntent, replaces_id: int | None) -> TxIntent:
        for row in self.rows.values():
            if (
                row.live
                and self._same_scope(row, new.chain_id, new.signer)
                and (row.nonce == new.nonce)
            ):
                raise ConstraintViolation(
                    "tx_intent_live_nonce", f"nonce {new.nonce} already has live intent {row.id}"
                )
        row = TxIntent(
            id=self._next_id,
            rebalance_id=new.rebalance_id,
            chain_id=new.chain_id,
            signer=new.signer,
            nonce=new.nonce,
            raw_tx=new.raw_tx,
            tx_hash=new.tx_hash,
            status="SIGNED",
            fencing_token=new.fencing_token,
            max_fee_per_gas=new.max_fee_per_gas,
            max_priority_fee_per_gas=new.max_priority_fee_per_gas,
            replaces_id=replaces_id,
            block_number=None,
            gas_used=None,
            effective_gas_price=None,
            error=None,
            created_at=EPOCH,
            updated_at=EPOCH,
            purpose=new.purpose,
            call_index=new.call_index,
            tx_to=new.tx_to,
            tx_data=new.tx_data,
            tx_value=new.tx_value,
            gas_limit=new.gas_limit,
            deadline=new.deadline,
            packed_rebalance_ids=new.packed_rebalance_ids,
            packed_weights=new.packed_weights,
        )
        self._next_id += 1
        self.rows[row.id] = row
        self.events.append(("recorded", row.tx_hash))
        self.events.append(("status", row.tx_hash, "SIGNED"))
        self.on_record(row)
        return row

    # -- IntentStore --

    async def insert_intent(self, intent: NewTxIntent) -> TxIntent:
        await self._enter("insert_intent")
        row = self._insert(intent, replaces_id=None)
        self._committed("insert_intent")
        return row

    async def replace_intent(self, old_id: int, new: NewTxIntent) -> TxIntent:
        await self._enter("replace_intent")
        old = self.rows.get(old_id)
        if old is None:
            raise NotFound(f"no tx_intent {old_id}")
        if not old.live:
            raise ConstraintViolation(
                "tx_intent_replace_live",
                f"tx_intent {old_id} is {old.status}; only a live intent can be replaced",
            )
        if not (self._same_scope(old, new.chain_id, new.signer) and old.nonce == new.nonce):
            raise ConstraintViolation(
                "tx_intent_replace_same_nonce", "a replacement must use the same nonce"
            )
        self._set(old, status="REPLACED")
        carried = attrs.evolve(
            new,
            rebalance_id=old.rebalance_id,
            packed_rebalance_ids=old.packed_rebalance_ids,
            packed_weights=old.packed_weights,
        )
        row = self._insert(carried, replaces_id=old_id)
        self._committed("replace_intent")
        return row

    async def mark_intent(
        self, intent_id: int, status: IntentStatus, *, error: str | None = None
    ) -> TxIntent:
        await self._enter("mark_intent")
        row = self.rows.get(intent_id)
        if row is None:
            raise NotFound(f"no tx_intent {intent_id}")
        row = self._set(row, status=status, error=error if error is not None else row.error)
        self._committed("mark_intent")
        return row

    async def record_intent_receipt(self, intent_id: int, receipt: TxReceipt) -> TxIntent:
        await self._enter("record_intent_receipt")
        row = self.rows.get(intent_id)
        if row is None:
            raise NotFound(f"no tx_intent {intent_id}")
        row = self._set(
            row,
            status="CONFIRMED" if receipt.succeeded else "REVERTED",
            block_number=receipt.block_number,
            gas_used=receipt.gas_used,
            effective_gas_price=receipt.effective_gas_price,
        )
        for other in list(self.rows.values()):
            if (
                other.id != row.id
                and self._same_scope(other, row.chain_id, row.signer)
                and other.nonce == row.nonce
                and other.status in UNSETTLED
            ):
                self._set(other, status="DROPPED")
        self._committed("record_intent_receipt")
        return row

    async def drop_nonce(self, chain_id: int, signer: str, nonce: int, error: str) -> None:
        await self._enter("drop_nonce")
        for row in list(self.rows.values()):
            if (
                self._same_scope(row, chain_id, signer)
                and row.nonce == nonce
                and row.status in UNSETTLED
            ):
                self._set(row, status="DROPPED", error=error)
        self._committed("drop_nonce")

    async def nonce_versions(self, chain_id: int, signer: str) -> list[TxIntent]:
        await self._enter("nonce_versions")
        mine = [r for r in self.rows.values() if self._same_scope(r, chain_id, signer)]
        live_nonces = {r.nonce for r in mine if r.status in LIVE_INTENT_STATUSES}
        return sorted(
            (r for r in mine if r.status in UNSETTLED and r.nonce in live_nonces),
            key=lambda r: (r.nonce, r.id),
        )


# --- the node -----------------------------------------------------------------------------------


def rpc_error(message: str) -> RpcError:
    return RpcError(-32000, message)


@attrs.define(eq=False)
class FakeNode:
    """:class:`daemon.transactions.Node`: the mempool and chain of one signer.

    * ``automine``: every accepted transaction is mined at once (as far as nonce order allows);
      otherwise :meth:`mine` / :meth:`mine_all` / :meth:`mine_version` mine on demand.
    * ``send_script``: the next sends raise these errors; ``True`` = the node took it anyway
      (a lost reply), ``False`` = it did not.
    * ``funded = False``: every send is refused and nothing is taken.
    * ``refuse``: per-transaction refusal (an error to raise, or None).
    * ``observe_errors``: the next observations raise these.
    * ``hidden``: mined hashes the node does not serve yet (it already counts their nonce).
    """

    signer: str
    events: list[Event] = attrs.Factory(list)
    own_chain_id: int = CHAIN_ID
    served_chain_id: int = CHAIN_ID
    base_fee: int = 10 * GWEI
    priority_fee: int = 1 * GWEI
    head_timestamp: int = 1_700_000_000
    block_number: int = 100
    automine: bool = True
    funded: bool = True
    refuse_below_base_fee: bool = True
    min_priority_to_mine: int = 0
    keep_replaced: bool = False
    price_bump_percent: int = 10
    send_script: list[tuple[ChainError, bool]] = attrs.Factory(list)
    refuse: Callable[[TxIntent], ChainError | None] | None = None
    observe_errors: list[ChainError] = attrs.Factory(list)
    revert_hashes: set[str] = attrs.Factory(set)
    reverts: Callable[[TxIntent], bool] | None = None
    """Reverts these when mined (a predicate, for hashes not known in advance)."""
    hidden: set[str] = attrs.Factory(set)
    signed: dict[bytes, TxIntent] = attrs.Factory(dict)
    by_hash: dict[str, TxIntent] = attrs.Factory(dict)
    pool: dict[str, TxIntent] = attrs.Factory(dict)
    mined_nonce: int = 0
    mined: dict[int, str] = attrs.Factory(dict)
    receipts: dict[str, Receipt] = attrs.Factory(dict)
    sends: list[str] = attrs.Factory(list)
    unrecorded_sends: list[str] = attrs.Factory(list)
    """Hashes sent that the store had not recorded first: must stay empty."""
    observations: int = 0

    @property
    def chain_id(self) -> int:
        return self.own_chain_id

    def learn(self, intent: TxIntent) -> None:
        """The store recorded a signed version: remember its bytes."""
        self.signed[intent.raw_tx] = intent
        self.by_hash[intent.tx_hash] = intent

    # -- Node --

    async def observe(self, signer: str, hashes: Sequence[str]) -> NodeView:
        await trio.lowlevel.checkpoint()
        assert signer.lower() == self.signer.lower()
        self.observations += 1
        if self.observe_errors:
            raise self.observe_errors.pop(0)
        visible = [h for h in hashes if h not in self.hidden]
        return NodeView(
            chain_id=self.served_chain_id,
            mined_nonce=self.mined_nonce,
            head_timestamp=self.head_timestamp,
            base_fee=self.base_fee,
            receipts={h: self.receipts[h] for h in visible if h in self.receipts},
            known=frozenset(h for h in visible if h in self.pool or h in self.receipts),
        )

    async def send(self, raw: bytes) -> None:
        await trio.lowlevel.checkpoint()
        tx = self.signed.get(raw)
        if tx is None:
            # A typed transaction's hash is the hash of its bytes: it is out, whatever we say.
            tx_hash = hex_of(keccak(raw))
            self.events.append(("send", tx_hash))
            self.unrecorded_sends.append(tx_hash)
            raise rpc_error("transaction never recorded by the store")
        self.events.append(("send", tx.tx_hash))
        self.sends.append(tx.tx_hash)
        if self.send_script:
            error, taken = self.send_script.pop(0)
            if taken:
                self._admit(tx)
            raise error
        refusal = self._refusal(tx)
        if refusal is not None:
            raise refusal
        self._admit(tx)

    async def fees(self) -> FeeData:
        await trio.lowlevel.checkpoint()
        return FeeData(base_fee=self.base_fee, priority_fee=self.priority_fee)

    # -- the pool --

    def _refusal(self, tx: TxIntent) -> ChainError | None:
        if tx.tx_hash in self.pool or tx.tx_hash in self.receipts:
            return rpc_error("already known")
        if tx.nonce < self.mined_nonce:
            return rpc_error("nonce too low")
        if not self.funded:
            return rpc_error("insufficient funds for gas * price + value")
        if self.refuse is not None:
            refused = self.refuse(tx)
            if refused is not None:
                return refused
        if self.refuse_below_base_fee and (tx.max_fee_per_gas or 0) < self.base_fee:
            return rpc_error("max fee per gas less than block base fee")
        factor = 100 + self.price_bump_percent
        for other in self.pool.values():
            if other.nonce != tx.nonce:
                continue
            if (tx.max_fee_per_gas or 0) * 100 < (other.max_fee_per_gas or 0) * factor or (
                tx.max_priority_fee_per_gas or 0
            ) * 100 < (other.max_priority_fee_per_gas or 0) * factor:
                return rpc_error("replacement transaction underpriced")
        return None

    def _admit(self, tx: TxIntent) -> None:
        if tx.tx_hash in self.pool or tx.tx_hash in self.receipts or tx.nonce < self.mined_nonce:
            return
        if not self.keep_replaced:
            for other in [o for o in self.pool.values() if o.nonce == tx.nonce]:
                del self.pool[other.tx_hash]
        self.pool[tx.tx_hash] = tx
        self.events.append(("accepted", tx.tx_hash))
        if self.automine:
            self.mine_all()

    # -- the chain --

    def _tip(self, tx: TxIntent) -> int:
        return min(tx.max_priority_fee_per_gas or 0, (tx.max_fee_per_gas or 0) - self.base_fee)

    def mine(self) -> str | None:
        """Mine the best pooled version of the next nonce, if one can pay the base fee."""
        candidates = [
            tx
            for tx in self.pool.values()
            if tx.nonce == self.mined_nonce
            and (tx.max_fee_per_gas or 0) >= self.base_fee
            and self._tip(tx) >= self.min_priority_to_mine
        ]
        if not candidates:
            return None
        best = max(candidates, key=lambda t: (self._tip(t), t.max_fee_per_gas or 0))
        return self._include(best)

    def mine_all(self) -> list[str]:
        mined = []
        while (tx_hash := self.mine()) is not None:
            mined.append(tx_hash)
        return mined

    def mine_version(self, tx_hash: str) -> str:
        """Mine this exact signed version (a miner that still had it in its own pool)."""
        tx = self.by_hash[tx_hash]
        assert tx.nonce == self.mined_nonce, (tx.nonce, self.mined_nonce)
        return self._include(tx)

    def _include(self, tx: TxIntent) -> str:
        self.block_number += 1
        gas = CANCEL_GAS if tx.purpose == "cancel" else int(tx.gas_limit or CANCEL_GAS)
        self.receipts[tx.tx_hash] = Receipt(
            transaction_hash=tx.tx_hash,
            block_number=self.block_number,
            status=0 if self._reverted(tx) else 1,
            gas_used=gas * 4 // 5 if tx.purpose != "cancel" else gas,
            effective_gas_price=self.base_fee + self._tip(tx),
            logs=(),
        )
        self._consume(tx.nonce, tx.tx_hash)
        return tx.tx_hash

    def _reverted(self, tx: TxIntent) -> bool:
        return tx.tx_hash in self.revert_hashes or (self.reverts is not None and self.reverts(tx))

    def consume_by_other(self) -> int:
        """Another transaction of this signer (another process, a wallet) takes the next
        nonce; our versions of it leave the pool."""
        nonce = self.mined_nonce
        self.block_number += 1
        self._consume(nonce, f"foreign-{nonce}")
        return nonce

    def _consume(self, nonce: int, tx_hash: str) -> None:
        for other in [o for o in self.pool.values() if o.nonce == nonce]:
            del self.pool[other.tx_hash]
        self.mined[nonce] = tx_hash
        self.mined_nonce = nonce + 1
        self.events.append(("mined", tx_hash))


def transport_error(message: str = "connection reset by peer") -> RpcTransportError:
    return RpcTransportError(message)


# --- the chain client and the pools, as the executor reads them ---------------------------------

ALLOWANCE = function_selector("allowance(address,address)")
BALANCE_OF = function_selector("balanceOf(address)")
LATEST_ROUND_DATA = function_selector("latestRoundData()")
PERIOD_LOSS = function_selector("periodLoss(address,address,bytes)")


def _word(value: int, *, signed: bool = False) -> bytes:
    return value.to_bytes(32, "big", signed=signed)


@attrs.define(eq=False)
class FakeChainClient:
    """The part of :class:`daemon.chain.ChainClient` the executor reads besides the lifecycle's
    :class:`FakeNode` (whose head it shares): the latest block, gas estimates, ``eth_call``
    batches of ``allowance`` / ``balanceOf`` / ``latestRoundData`` / ``periodLoss``, and the
    revert reason of a mined transaction. Every question is appended to ``asked``.

    An ``eth_call`` this fake does not know fails the test (AssertionError), rather than answer
    something the code may take for a fact."""

    node: FakeNode
    allowances: dict[tuple[str, str, str], int] = attrs.Factory(dict)
    """(token, owner, spender) → allowance; 0 when absent."""
    balances: dict[tuple[str, str], int] = attrs.Factory(dict)
    """(token, owner) → balance; 0 when absent."""
    feeds: dict[str, tuple[int, int]] = attrs.Factory(dict)
    """feed → (answer, updatedAt)."""
    period_loss: int = 0
    gas: int = 120_000
    estimate_reverts: str | None = None
    """Every gas estimate raises :class:`Reverted` with this reason."""
    revert_reason: str = ""
    """What replaying a reverted transaction says."""
    asked: list[str] = attrs.Factory(list)

    async def latest_block(self) -> Block:
        await trio.lowlevel.checkpoint()
        self.asked.append("latest_block")
        return Block(
            number=self.node.block_number,
            timestamp=self.node.head_timestamp,
            base_fee=self.node.base_fee,
            hash="0x" + f"{self.node.block_number:064x}",
        )

    async def estimate_gas(
        self, to: str, data: bytes, *, sender: str | None = None, value: int = 0
    ) -> int:
        await trio.lowlevel.checkpoint()
        self.asked.append("estimate_gas")
        if self.estimate_reverts is not None:
            raise Reverted(self.estimate_reverts)
        return self.gas

    async def call_many(
        self, calls: Sequence[tuple[str, bytes]], *, block: str | int = "latest"
    ) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        self.asked.append("call_many")
        return [self._call(to_address(to), data) for to, data in calls]

    def _call(self, to: str, data: bytes) -> bytes:
        selector, args = data[:4], data[4:]
        if selector == ALLOWANCE:
            owner, spender = abi_decode(["address", "address"], args)
            key = (to, to_address(owner), to_address(spender))
            return _word(self.allowances.get(key, 0))
        if selector == BALANCE_OF:
            (owner,) = abi_decode(["address"], args)
            return _word(self.balances.get((to, to_address(owner)), 0))
        if selector == LATEST_ROUND_DATA:
            # (roundId, answer, startedAt, updatedAt, answeredInRound)
            answer, updated_at = self.feeds[to]
            words = [1, answer, updated_at, updated_at, 1]
            return b"".join(_word(w, signed=True) for w in words)
        if selector == PERIOD_LOSS:
            return _word(self.period_loss)
        raise AssertionError(f"unexpected eth_call to {to}: {data[:4].hex()}")

    async def revert_reason_of(self, tx_hash: str) -> Reverted | None:
        await trio.lowlevel.checkpoint()
        self.asked.append("revert_reason_of")
        receipt = self.node.receipts.get(tx_hash)
        if receipt is None or receipt.succeeded:
            return None
        return Reverted(self.revert_reason)


@attrs.define(eq=False)
class FakePools:
    """:meth:`daemon.uniswap.UniswapV2.quote` over in-memory reserves of direct pairs, with the
    router's exact arithmetic (:func:`daemon.uniswap.get_amounts_out`). ``quoted`` logs each
    ``(token_in, token_out, amount_in)`` asked."""

    node: FakeNode
    reserves: dict[tuple[str, str], tuple[int, int]] = attrs.Factory(dict)
    quoted: list[tuple[str, str, int]] = attrs.Factory(list)

    def set_pool(self, token_a: str, reserve_a: int, token_b: str, reserve_b: int) -> None:
        self.reserves[(to_address(token_a), to_address(token_b))] = (reserve_a, reserve_b)

    def _hop(self, token_in: str, token_out: str) -> tuple[int, int]:
        if (token_in, token_out) in self.reserves:
            return self.reserves[(token_in, token_out)]
        if (token_out, token_in) in self.reserves:
            reserve_out, reserve_in = self.reserves[(token_out, token_in)]
            return reserve_in, reserve_out
        raise NoRoute(f"no pair for {token_in}/{token_out}")

    async def quote(self, token_in: str, token_out: str, amount_in: int) -> Quote:
        await trio.lowlevel.checkpoint()
        token_in, token_out = to_address(token_in), to_address(token_out)
        self.quoted.append((token_in, token_out, amount_in))
        hops = (self._hop(token_in, token_out),)
        return Quote(
            path=(token_in, token_out),
            amounts=tuple(get_amounts_out(amount_in, hops)),
            reserves=hops,
            block_number=self.node.block_number,
        )
