"""The money path's two per-attempt lookups on a long history, against the forms they replaced.

Not a test: prints a table. A throwaway PostgreSQL (``daemon.devtools.pgserver``) gets the real
schema and ``--attempts`` attempts of ``--portfolios`` portfolios, each with one confirmed swap
transaction, one in three packed with the next two attempts; then each query runs under
``EXPLAIN ANALYZE`` and its execution time is printed:

- the stale-balance refusal (``_refuse_if_traded_since``: a swap of the portfolio mined after
  the plan's balances), as it is and as the one join with an ``OR`` it replaced;
- an attempt's transactions (``intents_for_rebalance``), ``@>`` against ``= ANY``.

Usage: ``.venv/bin/python benchmarks/bench_attempt_lookups.py [--attempts 200000]
[--portfolios 2000]``
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import asyncpg
import trio

from daemon import db as dbm
from daemon.config import DatabaseConfig
from daemon.devtools.pgserver import start_server

# Portfolio 5's attempts and attempt 77's transactions (literals: nothing here is input).
QUERIES = {
    "stale-balance check, one join with OR (before)": (
        "SELECT max(i.block_number) FROM tx_intent i"
        " JOIN rebalance_log r ON r.id = i.rebalance_id OR r.id = ANY (i.packed_rebalance_ids)"
        " WHERE r.portfolio_id = 5 AND i.status = 'CONFIRMED' AND i.purpose = 'swap'"
    ),
    "stale-balance check, two indexed lookups (now)": (
        "SELECT max(block_number) FROM ("
        " SELECT i.block_number FROM tx_intent i JOIN rebalance_log r ON r.id = i.rebalance_id"
        " WHERE r.portfolio_id = 5 AND i.status = 'CONFIRMED' AND i.purpose = 'swap'"
        " UNION ALL SELECT i.block_number FROM tx_intent i WHERE i.packed_rebalance_ids"
        " && ARRAY(SELECT id FROM rebalance_log WHERE portfolio_id = 5)"
        " AND i.status = 'CONFIRMED' AND i.purpose = 'swap') AS mined"
    ),
    "an attempt's transactions, = ANY (before)": (
        "SELECT * FROM tx_intent WHERE rebalance_id = 77"
        " OR 77 = ANY (packed_rebalance_ids) ORDER BY id"
    ),
    "an attempt's transactions, @> (now)": (
        "SELECT * FROM tx_intent WHERE rebalance_id = 77"
        " OR packed_rebalance_ids @> ARRAY[77::bigint] ORDER BY id"
    ),
}


async def fill(conn: asyncpg.Connection, attempts: int, portfolios: int) -> None:
    # Rows only: the foreign keys' portfolios and tokens are not what is measured.
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        'INSERT INTO rebalance_log (portfolio_id, status, "timestamp", finished_at, error)'
        " SELECT (g % $2) + 1, 'FAILED', now(), now(), 'x' FROM generate_series(1, $1) g",
        attempts,
        portfolios,
    )
    await conn.execute(
        "INSERT INTO tx_intent (rebalance_id, chain_id, signer, nonce, raw_tx, tx_hash, status,"
        " fencing_token, purpose, block_number, packed_rebalance_ids, packed_weights)"
        " SELECT g, 1, '0x' || repeat('a', 40), g, '\\x00', '0x' || lpad(to_hex(g), 64, '0'),"
        " 'CONFIRMED', 1, 'swap', g,"
        " CASE WHEN g % 3 = 0 THEN ARRAY[g, g + 1, g + 2]::bigint[] END,"
        " CASE WHEN g % 3 = 0 THEN ARRAY[1, 1, 1] END"
        " FROM generate_series(1, $1) g",
        attempts,
    )
    await conn.execute("VACUUM ANALYZE")


async def measure(attempts: int, portfolios: int) -> dict[str, float]:
    with start_server() as server:
        async with dbm.open_database(DatabaseConfig(url=server.url())) as database:
            await database.migrate()

            async def work(conn: asyncpg.Connection) -> dict[str, float]:
                await fill(conn, attempts, portfolios)
                out: dict[str, float] = {}
                for name, query in QUERIES.items():
                    plan = [row[0] for row in await conn.fetch("EXPLAIN ANALYZE " + query)]
                    found = re.search(r"Execution Time: ([\d.]+) ms", "\n".join(plan))
                    assert found is not None, plan
                    out[name] = float(found.group(1))
                return out

            return await database._unit(work, transaction=False)


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=200_000)
    parser.add_argument("--portfolios", type=int, default=2_000)
    args = parser.parse_args(argv)
    figures = trio.run(measure, args.attempts, args.portfolios)
    print(f"{args.attempts} attempts of {args.portfolios} portfolios, one in three packed")
    for name, milliseconds in figures.items():
        print(f"  {name:<50} {milliseconds:>10.2f} ms")


if __name__ == "__main__":
    main()
