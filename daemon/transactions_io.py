"""What the transaction lifecycle (:mod:`daemon.transactions`) needs from the node and the
store, as two small protocols (:class:`Node`, :class:`IntentStore`), and :class:`ChainNode`, the
node over the JSON-RPC client.

Protocols, so that every transition of the lifecycle is unit-tested against in-memory fakes under
Trio's virtual clock (``tests/fakes_chain.py``), and the real ones stay thin.
:mod:`daemon.transactions` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from daemon.abi import hex_int, hex_of
from daemon.chain import ChainClient, FeeData, Receipt
from daemon.chain_errors import Json, RpcTransportError
from daemon.db import NewTxIntent, TxIntent, TxReceipt
from daemon.transactions_values import NodeView


class Node(Protocol):
    """The questions the lifecycle asks of the chain."""

    @property
    def chain_id(self) -> int:
        """The chain this process signs for."""

    async def observe(self, signer: str, hashes: Sequence[str]) -> NodeView:
        """Receipts and knowledge of ``hashes``, the mined nonce, the head; one round trip.
        Raises :class:`~daemon.chain.ChainError` on any failure or malformed reply."""

    async def send(self, raw: bytes) -> None:
        """``eth_sendRawTransaction``. Its outcome is never trusted: the next observation
        tells whether the node has the transaction."""

    async def fees(self) -> FeeData:
        """Base fee and suggested priority fee now."""


class IntentStore(Protocol):
    """Where intents are recorded (``tx_intent``; :class:`daemon.db.Database`)."""

    async def insert_intent(self, intent: NewTxIntent) -> TxIntent: ...

    async def replace_intent(self, old_id: int, new: NewTxIntent) -> TxIntent: ...

    async def mark_intent(
        self, intent_id: int, status: Any, *, error: str | None = None
    ) -> TxIntent: ...

    async def record_intent_receipt(self, intent_id: int, receipt: TxReceipt) -> TxIntent: ...

    async def drop_nonce(self, chain_id: int, signer: str, nonce: int, error: str) -> None: ...

    async def nonce_versions(self, chain_id: int, signer: str) -> list[TxIntent]: ...


@attrs.define(eq=False)
class ChainNode:
    """:class:`Node` over the JSON-RPC client."""

    client: ChainClient

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    async def observe(self, signer: str, hashes: Sequence[str]) -> NodeView:
        calls: list[tuple[str, Sequence[Json]]] = [
            ("eth_chainId", []),
            ("eth_getTransactionCount", [signer, "latest"]),
            ("eth_getBlockByNumber", ["latest", False]),
        ]
        calls += [("eth_getTransactionReceipt", [h]) for h in hashes]
        calls += [("eth_getTransactionByHash", [h]) for h in hashes]
        results = await self.client.batch(calls)
        try:
            chain_id, mined, head = hex_int(results[0]), hex_int(results[1]), results[2]
            receipts: dict[str, Receipt] = {}
            known: set[str] = set()
            for tx_hash, raw in zip(hashes, results[3 : 3 + len(hashes)], strict=True):
                if raw is not None and raw.get("blockNumber") is not None:
                    receipts[tx_hash] = Receipt.from_json(raw)
                    known.add(tx_hash)
            for tx_hash, raw in zip(hashes, results[3 + len(hashes) :], strict=True):
                if raw is not None:
                    known.add(tx_hash)
            return NodeView(
                chain_id=chain_id,
                mined_nonce=mined,
                head_timestamp=hex_int(head["timestamp"]),
                base_fee=hex_int(head.get("baseFeePerGas") or "0x0"),
                receipts=receipts,
                known=frozenset(known),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A reply that does not parse is a transient fault, never a verdict.
            raise RpcTransportError(f"malformed reply to a transaction check: {exc!r}") from None

    async def send(self, raw: bytes) -> None:
        await self.client.request("eth_sendRawTransaction", [hex_of(raw)])

    async def fees(self) -> FeeData:
        return await self.client.fee_data()
