"""The executor refuses a leg whose pool is off the plan's price (issue 12).

The price-impact cap measures a swap against the pool it goes through, so a pool pushed
off-market before the quote passes it: the plan says 1 WETH is worth 3 000 USDC, the pool pays
2 250, and the impact is the usual ~0.3 %. The executor now compares the pool's mid price with
the price the plan was made with. Real PostgreSQL, anvil and Uniswap V2; CoinGecko is a loopback
server at the devnet's reference prices; wallet mode, so no oracle guard stands behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
from daemon_harness import (
    daemon_document,
    fund_to_targets,
    move_price,
    register_tokens,
    run_cli,
    write_toml,
)
from http_server import Request, Response, loopback_http
from test_daemon import COINGECKO_IDS, TARGETS, TOTAL_USD, finished_rows, running_daemon, wait_for

from daemon import db as dbm
from daemon.attempt import quote_deviation
from daemon.chain import ChainClient
from daemon.config import DatabaseConfig
from daemon.devtools.devnet_deploy import fund
from daemon.devtools.devnet_records import Devnet
from daemon.drift import Leg
from daemon.messages import Token

pytestmark = pytest.mark.chain


@pytest.fixture
async def coingecko_at_reference(devnet: Devnet) -> AsyncIterator[str]:
    """CoinGecko's /simple/price answering the devnet's reference prices, always fresh."""
    symbols = {symbol: coin for coin, symbol in COINGECKO_IDS.items()}

    async def handler(request: Request) -> Response:
        body = {
            symbols[symbol]: {"usd": float(price), "last_updated_at": int(time.time())}
            for symbol, price in devnet.reference_usd.items()
            if symbol in symbols
        }
        return Response(body=json.dumps(body).encode())

    async with loopback_http(handler) as server:
        yield server.url + "/api/v3"


async def test_a_leg_through_a_pool_pushed_off_market_is_not_sent(
    chain: ChainClient,
    devnet: Devnet,
    db_config: DatabaseConfig,
    db: dbm.Database,
    tmp_path: Path,
    coingecko_at_reference: str,
) -> None:
    overrides = {
        "execution": {"mode": "wallet"},
        "prices": {
            "source": "oracle",
            "coingecko_base_url": coingecko_at_reference,
            "cross_check": False,
        },
    }
    path = write_toml(tmp_path / "config.toml", daemon_document(devnet, db_config, **overrides))
    env = {"DRIFTD_SIGNER_KEY": devnet.signer_key.reveal()}
    with trio.fail_after(90):
        await register_tokens(devnet, path, env)
        await fund_to_targets(chain, devnet, devnet.signer, TARGETS, TOTAL_USD)
        argv = ["portfolio", "add", "own", "--account", devnet.signer]
        argv += ["--target", *[f"{s}={w}" for s, w in TARGETS.items()]]
        assert await run_cli(argv, path, env) == 0
        # Someone pushes the WETH/USDC pool 25 % below the market; the signer's account also
        # receives 12 000 USD of WETH, so WETH is overweight and the plan sells it.
        await move_price(chain, devnet, "WETH", Decimal("0.75"))
        weth = int(Decimal(12_000) / devnet.reference_usd["WETH"] * 10**18)
        await fund(chain, devnet, devnet.signer, {"WETH": weth})
        async with running_daemon(devnet, db_config, **overrides):
            (row, *_) = await wait_for(lambda: finished_rows(db, "own"), "an attempt")
    reason = row.skip_reason or row.error or ""
    reference = int(devnet.reference_usd["WETH"])
    assert "WETH->USDC: the pool prices 1 WETH at " in reason, (row.status, reason)
    assert f"USDC, the plan at {reference}" in reason
    assert "above the max_quote_deviation 3%" in reason
    # Whatever was sent, the leg into the pushed pool was not.
    sent = [(leg["sell"], leg["buy"]) for leg in row.expected_outputs or ()]
    assert ("WETH", "USDC") not in sent


USDC = Token(symbol="USDC", address="0x" + "11" * 20, decimals=6)
WETH = Token(symbol="WETH", address="0x" + "12" * 20, decimals=18)


def _leg(usd_per_weth: int) -> Leg:
    """Sell 1 WETH for USDC at ``usd_per_weth`` (the plan's prices)."""
    return Leg(
        sell="WETH",
        buy="USDC",
        usd=Decimal(usd_per_weth),
        amount_in=10**18,
        expected_out=usd_per_weth * 10**6,
        capped=False,
    )


@pytest.mark.parametrize(
    ("pool_usdc_per_weth", "deviation"),
    [(3_000, "0"), (3_090, "0.03"), (2_910, "0.03"), (6_000, "1"), (1_500, "0.5")],
)
def test_deviation_is_the_pools_mid_price_against_the_plans_either_way(
    pool_usdc_per_weth: int, deviation: str
) -> None:
    reserves = [(1_000 * 10**18, pool_usdc_per_weth * 1_000 * 10**6)]
    found = quote_deviation(_leg(3_000), reserves, WETH, USDC)
    assert found.fraction == Decimal(deviation)
    text = found.describe(_leg(3_000), WETH, USDC, Decimal("0.03"))
    assert text.startswith(f"WETH->USDC: the pool prices 1 WETH at {pool_usdc_per_weth} USDC")
    assert "the plan at 3000 USDC" in text


def test_a_leg_the_plan_priced_at_nothing_is_as_far_off_as_can_be() -> None:
    leg = attrs.evolve(_leg(3_000), expected_out=0)
    assert quote_deviation(leg, [(10**18, 10**6)], WETH, USDC).fraction == 1
