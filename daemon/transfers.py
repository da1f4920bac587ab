"""Portfolio balances kept current from ERC-20 ``Transfer`` logs instead of read every tick.

A tracked account's balance of a token changes only through transfers (for a standard token), so
after one full read at a known block the follower applies each new block's ``Transfer`` logs of
the tracked tokens and knows every balance without asking for it. Per head it costs one block
read (to notice a reorg) and one ``eth_getLogs`` per ``max_range`` blocks, whatever the number of
accounts.

Correctness rules, each tested on the devnet (``tests/test_transfers.py``):

- **Reorgs**: the hash of the last block applied is checked against the node before every
  advance; if the node has another block at that height, everything is read afresh at the head
  (logs of an abandoned branch are never un-applied by guesswork).
- **Missed blocks and restarts**: an advance covers every block since the last one applied, in
  ranges of at most ``max_range`` blocks; a new follower starts with a full read.
- **A lagging node** (a head below the last block applied) changes nothing: balances never go
  back to an older state. A reorg to a shorter chain looks the same, and is noticed (by the
  hash check) as soon as the chain grows past the block applied last.
- **Tokens whose balances change without ``Transfer`` events** (rebasing tokens, declared in
  ``rebasing``) are read in full on every advance, never computed from logs.
- ``verify()`` (periodically) reads every balance at the block applied last: a token whose
  balances the logs got wrong is detected, corrected and read in full from then on, so a token
  that misbehaves in a way nobody declared is caught within one period.

Not wired into the portfolio actors yet (issue 15): :class:`daemon.balances.BalanceBatcher`
still serves them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs
from eth_utils.crypto import keccak

from daemon.abi import encode_call, hex_int
from daemon.address import to_address
from daemon.chain import Block, ChainClient
from daemon.chain_errors import Json

TRANSFER_TOPIC: Final = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
MAX_RANGE: Final = 1000
"""Blocks per ``eth_getLogs`` (providers commonly refuse wider ranges)."""


def _topic_address(topic: str) -> str:
    return to_address("0x" + topic[-40:])


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(to_address(value) for value in values)


def _address_set(values: Iterable[str]) -> frozenset[str]:
    return frozenset(to_address(value) for value in values)


@attrs.define(eq=False)
class TransferFollower:
    """Balances of ``accounts`` in ``tokens``, current as of :attr:`block`."""

    chain: ChainClient
    tokens: tuple[str, ...] = attrs.field(converter=_addresses)
    accounts: frozenset[str] = attrs.field(converter=_address_set)
    rebasing: frozenset[str] = attrs.field(default=frozenset(), converter=_address_set)
    max_range: int = MAX_RANGE
    balances: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    """(account, token) → balance in base units, as of :attr:`block`."""
    block: Block | None = attrs.field(default=None, init=False)
    """The last block applied (None before the first reconcile)."""
    reconciles: int = attrs.field(default=0, init=False)

    def balances_of(self, account: str) -> Mapping[str, int]:
        """One account's balances by token address (every tracked token)."""
        account = to_address(account)
        return {token: self.balances[(account, token)] for token in self.tokens}

    async def reconcile(self) -> None:
        """Read every balance at the head block (one batch)."""
        head = await self.chain.latest_block()
        self.balances = await self._read(self.accounts, self.tokens, head.number)
        self.block = head
        self.reconciles += 1

    async def verify(self) -> list[str]:
        """Read every balance at the block applied last and compare with what the logs gave.

        Tokens whose balances differ change without ``Transfer`` events (a rebase, interest, a
        non-standard token): they are moved to :attr:`rebasing` — read in full from now on — and
        returned, so the caller can warn. Every balance is then the one read."""
        if self.block is None:
            await self.reconcile()
            return []
        actual = await self._read(self.accounts, self.tokens, self.block.number)
        changed = sorted(
            {key[1] for key, value in actual.items() if self.balances.get(key) != value}
        )
        self.rebasing = self.rebasing | frozenset(changed)
        self.balances = actual
        return changed

    async def advance(self) -> None:
        """Apply every block since the last one applied, up to the node's head."""
        if self.block is None:
            await self.reconcile()
            return
        head = await self.chain.latest_block()
        if head.number < self.block.number:
            return  # a node behind the one we followed: keep what we know
        if head.number == self.block.number:
            if head.hash != self.block.hash:
                await self.reconcile()  # another block at our height: a reorg
            return
        seen = await self.chain.get_block(self.block.number)
        if seen.hash != self.block.hash:
            await self.reconcile()  # a reorg replaced the block we applied last
            return
        # Everything is fetched first and applied with no await in between: an advance that is
        # cancelled or fails midway changes nothing (applying part of it would count those logs
        # twice on the next advance).
        logs: list[Json] = []
        start = self.block.number + 1
        while start <= head.number:
            end = min(start + self.max_range - 1, head.number)
            logs += await self._logs(start, end)
            start = end + 1
        rebased = {}
        if self.rebasing:
            rebased = await self._read(self.accounts, sorted(self.rebasing), head.number)
        self._apply(logs)
        self.balances.update(rebased)
        self.block = head

    async def _logs(self, start: int, end: int) -> list[Json]:
        params: dict[str, Json] = {
            "fromBlock": hex(start),
            "toBlock": hex(end),
            "address": list(self.tokens),
            "topics": [TRANSFER_TOPIC],
        }
        logs = await self.chain.request("eth_getLogs", [params])
        if not isinstance(logs, list):
            raise ValueError(f"eth_getLogs answered {type(logs).__name__}, not a list")
        return logs

    def _apply(self, logs: Iterable[Json]) -> None:
        for log in logs:
            if not isinstance(log, dict) or log.get("removed"):
                continue
            token = to_address(str(log["address"]))
            topics = log["topics"]
            if token in self.rebasing or not isinstance(topics, list) or len(topics) != 3:
                continue  # rebasing tokens are read; a non-standard Transfer is not guessed at
            sender, recipient = _topic_address(str(topics[1])), _topic_address(str(topics[2]))
            value = hex_int(str(log["data"])) if log["data"] not in ("0x", "") else 0
            if sender in self.accounts:
                self.balances[(sender, token)] -= value
            if recipient in self.accounts:
                self.balances[(recipient, token)] += value

    async def _read(
        self, accounts: Iterable[str], tokens: Sequence[str], block: int
    ) -> dict[tuple[str, str], int]:
        pairs = [(account, token) for account in sorted(accounts) for token in tokens]
        calls = [
            (
                "eth_call",
                [
                    {"to": token, "data": "0x" + encode_call("balanceOf(address)", account).hex()},
                    hex(block),
                ],
            )
            for account, token in pairs
        ]
        results: list[Json] = []
        for start in range(0, len(calls), 500):
            results += await self.chain.batch(calls[start : start + 500])
        return {pair: hex_int(str(raw)) for pair, raw in zip(pairs, results, strict=True)}
