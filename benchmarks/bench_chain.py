"""eth_call round trip: driftd's ChainClient against raw JSON-RPC on the same anvil.

Not a test: prints p50/p99 latencies and the client/raw ratio (target: the client adds no more
than 2× over raw). "Raw" is measured two ways: a pre-encoded request body posted with httpx on
Trio (the same transport the client uses, so the ratio is the client's own overhead: request
building, JSON, error handling, hex decoding) and a blocking stdlib ``http.client`` keep-alive
connection (the floor any Python client could reach).

Usage: ``.venv/bin/python benchmarks/bench_chain.py [--calls N]`` (``./dev bench`` runs it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import trio

from daemon.abi import encode_call
from daemon.chain import ChainClient, RetryPolicy
from daemon.devtools.devnet import open_devnet
from daemon.devtools.devnet_records import Devnet


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1000, p99 * 1000


async def time_async(calls: int, one: Callable[[], Awaitable[None]]) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        samples.append(time.perf_counter() - started)
    return samples


def balance_of_body(devnet: Devnet) -> tuple[str, bytes, bytes]:
    """The token, calldata and pre-encoded JSON-RPC body of the eth_call both sides time."""
    token = devnet.token("USDC").address
    data = encode_call("balanceOf(address)", devnet.deployer)
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [{"to": token, "data": "0x" + data.hex()}, "latest"],
        }
    ).encode()
    return token, data, body


async def eth_call_samples(devnet: Devnet, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per eth_call, ``calls`` of each after 200 to warm up: driftd's
    ``ChainClient.call``, and the same request pre-encoded and posted with httpx on Trio."""
    token, data, body = balance_of_body(devnet)
    async with ChainClient(devnet.chain_config(), retry=RetryPolicy(max_retries=0)) as client:
        expected = await client.call(token, data)

        async def ours() -> None:
            if await client.call(token, data) != expected:
                raise RuntimeError("eth_call answered differently")

        await time_async(200, ours)
        client_samples = await time_async(calls, ours)

    async with httpx.AsyncClient(headers={"content-type": "application/json"}) as raw_http:

        async def raw() -> None:
            response = await raw_http.post(devnet.rpc_url, content=body)
            response.read()

        await time_async(200, raw)
        raw_samples = await time_async(calls, raw)
    return client_samples, raw_samples


async def bench(devnet: Devnet, calls: int) -> dict[str, tuple[float, float]]:
    _token, _data, body = balance_of_body(devnet)
    client_samples, raw_samples = await eth_call_samples(devnet, calls)
    results = {
        "driftd ChainClient.call": percentiles(client_samples),
        "raw httpx (pre-encoded)": percentiles(raw_samples),
    }

    def stdlib() -> list[float]:
        port = int(devnet.rpc_url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port)
        samples = []
        for index in range(calls + 200):
            started = time.perf_counter()
            connection.request("POST", "/", body, {"content-type": "application/json"})
            connection.getresponse().read()
            if index >= 200:
                samples.append(time.perf_counter() - started)
        connection.close()
        return samples

    results["raw http.client (blocking)"] = percentiles(await trio.to_thread.run_sync(stdlib))
    return results


async def main(calls: int) -> None:
    async with open_devnet(owners=1) as devnet:
        print(f"devnet deployed in {devnet.deploy_seconds * 1000:.0f} ms; {calls} eth_call each")
        results = await bench(devnet, calls)
    for name, (p50, p99) in results.items():
        print(f"{name:32} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    ours = results["driftd ChainClient.call"]
    for name in ("raw httpx (pre-encoded)", "raw http.client (blocking)"):
        raw = results[name]
        p50_ratio, p99_ratio = ours[0] / raw[0], ours[1] / raw[1]
        print(f"ratio driftd / {name:27} p50 {p50_ratio:5.2f}×   p99 {p99_ratio:5.2f}×")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    trio.run(main, parser.parse_args().calls)
