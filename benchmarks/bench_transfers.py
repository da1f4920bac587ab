"""Balances of N portfolios per head: followed from Transfer logs vs read in full.

Not a test: prints a table. On a fresh devnet (anvil on loopback), N tracked accounts of 3
tokens each; per head a few transfers touch some of them. Figures, median of ``--heads`` heads:

- **full read**: every balance read through ``BalanceBatcher`` (what each tick costs today);
- **follow**: ``TransferFollower.advance`` — one block read for the reorg check and one
  ``eth_getLogs`` for the new blocks, then the logs applied in memory.

Usage: ``.venv/bin/python benchmarks/bench_transfers.py [--sizes 1000,10000] [--heads 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio
from eth_account import Account

from daemon.balances import BalanceBatcher
from daemon.chain import ChainClient, RetryPolicy
from daemon.devtools.devnet import open_devnet
from daemon.devtools.devnet_deploy import fund
from daemon.transfers import TransferFollower


async def main(sizes: list[int], heads: int) -> None:
    async with open_devnet(owners=1) as devnet:
        config = devnet.chain_config()
        async with ChainClient(config, retry=RetryPolicy(max_retries=config.max_retries)) as client:
            tokens = [token.address for token in devnet.tokens]
            print(f"per head, median of {heads} heads (3 tokens; 2 transfers per head)")
            print(
                f"{'N':>7} {'full read ms':>13} {'requests':>9} {'follow ms':>10} {'requests':>9}"
            )
            for size in sizes:
                accounts = [Account.create().address for _ in range(size)]
                tracked = TransferFollower(client, tokens, accounts)
                await tracked.reconcile()
                full, full_requests, follow, follow_requests = [], [], [], []
                async with trio.open_nursery() as nursery:
                    batcher = BalanceBatcher(client, max_calls=config.max_batch_calls)
                    await nursery.start(batcher.run)
                    for head in range(heads):
                        await fund(client, devnet, accounts[head], {"USDC": 10**6})
                        await fund(client, devnet, accounts[-1 - head], {"WBTC": 10})
                        sent, started = client.requests_sent, time.perf_counter()
                        async with trio.open_nursery() as reads:
                            for account in accounts:
                                reads.start_soon(batcher.read, account, tokens)
                        full.append(time.perf_counter() - started)
                        full_requests.append(client.requests_sent - sent)
                        sent, started = client.requests_sent, time.perf_counter()
                        await tracked.advance()
                        follow.append(time.perf_counter() - started)
                        follow_requests.append(client.requests_sent - sent)
                    nursery.cancel_scope.cancel()
                assert tracked.reconciles == 1
                for account in (accounts[0], accounts[-1]):
                    assert tracked.balances_of(account) == await client.balances(account, tokens)
                print(
                    f"{size:>7} {statistics.median(full) * 1e3:>13.1f}"
                    f" {statistics.median(full_requests):>9.0f}"
                    f" {statistics.median(follow) * 1e3:>10.1f}"
                    f" {statistics.median(follow_requests):>9.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--heads", type=int, default=5)
    args = parser.parse_args()
    trio.run(main, [int(s) for s in args.sizes.split(",")], args.heads)
