"""``driftd demo``: end to end as a real subprocess, and its pure parts.

The end-to-end tests run the demo exactly as CI would (``--headless``, JSON lines on stdout) and
check what it promises: every portfolio rebalanced by a transaction the demo found on its devnet,
a summary, exit 0 — and afterwards no process it started (anvil, PostgreSQL and its backends),
no port it listened on and no temporary directory left, whether it ended by itself, by a
terminal's Ctrl-C (SIGINT to the whole process group) or by SIGTERM.

Until ``daemon/cli.py`` registers the subcommand, the demo runs as ``python -m daemon.cli.demo``
(the same handler); once it does, as ``python -m daemon demo``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest

from daemon import exitcodes
from daemon.amm import get_amount_out
from daemon.devtools.demo import DemoOptions, run
from daemon.devtools.demo_setup import portfolio_plans
from daemon.devtools.demo_stats import RebalanceEvent, leg_slippages, summarize
from daemon.devtools.market import RandomWalk, WalkParams, amount_to_move

ROOT = Path(__file__).resolve().parent.parent
SEED = "3"
"""A market seed whose first moves push both test portfolios over the threshold early."""
TX_HASH = re.compile(r"^0x[0-9a-f]{64}$")


# --- helpers: the demo as a subprocess, and what it leaves behind -----------------------------


def demo_command(*args: str) -> list[str]:
    from daemon.cli.main import build_parser

    parser = build_parser()
    wired = any(
        "demo" in (getattr(action, "choices", None) or {})
        for action in parser._actions
        if action.dest == "command"
    )
    entry = ["-m", "daemon", "demo"] if wired else ["-m", "daemon.cli.demo"]
    return [sys.executable, *entry, *args]


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, command name, state) of every process (Linux /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may contain spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        table[int(entry.name)] = (int(ppid), comm, state)
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid``: pid → command name."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, comm, state) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = comm
                frontier.append(child)
    return found


def still_running(processes: dict[int, str]) -> dict[int, str]:
    table = process_table()
    return {
        pid: comm
        for pid, comm in processes.items()
        if pid in table and table[pid][1] == comm and table[pid][2] != "Z"
    }


def listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class DemoRun:
    """A running ``driftd demo --headless`` in its own process group."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "demo.stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                demo_command("--headless", *args),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=ROOT,
                start_new_session=True,  # its own process group, like a terminal job
            )
        self.events: list[dict[str, Any]] = []
        self.children: dict[int, str] = {}
        self.ports: set[int] = set()

    def read_until(self, event: str, timeout: float) -> dict[str, Any]:
        """Read JSON lines until one with ``event`` (bounded by ``timeout``)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                pytest.fail(f"demo ended before {event!r}; stderr:\n{self.stderr()}")
            document = json.loads(line)
            self.events.append(document)
            if document["event"] == event:
                return document
        pytest.fail(f"no {event!r} event within {timeout} s")

    def note_resources(self, started: dict[str, Any]) -> None:
        """What the demo holds while it runs: its processes and its ports."""
        self.children = descendants(self.process.pid)
        self.ports = {int(started["rpc_url"].rsplit(":", 1)[1]), started["database_port"]}
        names = set(self.children.values())
        assert "anvil" in names, self.children
        assert "postgres" in names, self.children
        assert self.ports <= listening_ports()

    def finish(self, timeout: float) -> int:
        assert self.process.stdout is not None
        rest, _ = self.process.communicate(timeout=timeout)
        self.events += [json.loads(line) for line in rest.splitlines() if line.strip()]
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@pytest.fixture
def demo_runs() -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    yield runs
    for demo in runs:
        demo.kill()


def assert_nothing_left(demo: DemoRun, started: dict[str, Any]) -> None:
    deadline = time.monotonic() + 5  # reparented backends may take a moment to be reaped
    while still_running(demo.children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert still_running(demo.children) == {}
    assert not demo.ports & listening_ports()
    assert not Path(started["temp_dir"]).exists()
    assert not Path(started["health_socket"]).exists()


# --- end to end -------------------------------------------------------------------------------


@attrs.frozen
class HeadlessRun:
    """One finished ``driftd demo --headless --report DIR`` run."""

    demo: DemoRun
    started: dict[str, Any]
    returncode: int
    reports: Path


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadlessRun]:
    """The demo run end to end once; the tests below check what it did and what it left
    (the run is the slow part: one serves them all)."""
    tmp_path = tmp_path_factory.mktemp("headless-demo")
    reports = tmp_path / "reports"
    demo = DemoRun(
        tmp_path, "--duration", "15", "--portfolios", "2", "--seed", SEED, "--report", str(reports)
    )
    try:
        started = demo.read_until("started", timeout=30)
        demo.note_resources(started)
        yield HeadlessRun(demo, started, demo.finish(timeout=60), reports)
    finally:
        demo.kill()


@pytest.mark.timeout(90)
def test_headless_demo_rebalances_every_portfolio_and_leaves_nothing_behind(
    headless_run: HeadlessRun,
) -> None:
    demo, started = headless_run.demo, headless_run.started
    assert headless_run.returncode == exitcodes.OK, demo.stderr()

    assert demo.events[0]["event"] == "started"
    assert demo.events[-1]["event"] == "summary"
    names = [p["name"] for p in started["portfolios"]]
    assert len(names) == 2
    assert len({json.dumps(p["targets"], sort_keys=True) for p in started["portfolios"]}) == 2
    assert demo.of("price_move")
    for move in demo.of("price_move"):
        assert TX_HASH.match(move["tx_hash"])
    successes = [e for e in demo.of("rebalance") if e["status"] == "SUCCESS"]
    for name in names:
        mine = [e for e in successes if e["portfolio"] == name]
        assert mine, f"no successful rebalance of {name}; stderr:\n{demo.stderr()}"
        for event in mine:
            assert TX_HASH.match(event["tx_hash"])
            assert event["on_chain"] is True  # its receipt was found on the devnet
            assert isinstance(event["block_number"], int)
            assert event["gas_used"] > 0
            assert Decimal(event["gas_cost_usd"]) > 0
            assert Decimal(event["drift"]) >= Decimal("0.15")
            assert abs(Decimal(event["drift_after"])) < Decimal(event["drift"])

    summary = demo.events[-1]
    assert summary["ended_by"] == "duration"
    assert [p["name"] for p in summary["portfolios"]] == names
    for item in summary["portfolios"]:
        assert item["rebalances"] >= 1
        assert item["on_chain"] == item["rebalances"]
        assert item["gas_used"] > 0
    assert summary["total"]["rebalances"] == len(successes)

    assert_nothing_left(demo, started)


CHROMIUM = Path("/usr/bin/chromium")
CHART_SERIES = {
    "allocation": [r"weight-[A-Z]+", r"target-[A-Z]+"],
    "value": ["portfolio-value", "buy-and-hold-value"],
    "drift": ["max-drift", "threshold", "rebalances"],
    "costs": ["cost-gas", "cost-fees", "cost-impact", "cost-slippage"],
}


@pytest.mark.timeout(90)
def test_the_demo_report_renders_its_charts_in_headless_chromium(
    headless_run: HeadlessRun, tmp_path: Path
) -> None:
    """``driftd demo --report`` keeps each portfolio's ``driftd report --format html`` of the
    run (written before the demo deletes its database); opened in headless Chromium, the page
    needs no network and its charts render with the expected series."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (./dev test installs Debian's chromium)")
    assert headless_run.returncode == exitcodes.OK, headless_run.demo.stderr()
    pages = sorted(headless_run.reports.glob("*.html"))
    assert len(pages) == 2, pages
    for page in pages:
        _assert_charts_drawn(page.read_text())
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,3000",
            pages[0].as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    colours = _colours(screenshot)
    # Rendered charts, not a blank page: matplotlib's blue and orange series on a white page.
    assert colours["white"] > 0.5
    assert colours["blue"] > 0.0005
    assert colours["orange"] > 0.0002


def _assert_charts_drawn(page: str) -> None:
    # Self-contained: nothing is fetched (the SVG namespace URIs are names, not requests).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    for chart, patterns in CHART_SERIES.items():
        figure = re.search(rf'<figure id="chart-{chart}">(.*?)</figure>', page, re.S)
        assert figure is not None, chart
        svg = figure.group(1)
        for pattern in patterns:
            groups = re.findall(rf'<g id="{pattern}">(.*?)</g>', svg, re.S)
            assert groups, (chart, pattern)
            for group in groups:
                # Drawn: a path with coordinates, not an empty group.
                assert re.search(r'<path [^>]*d="M [-\d.]+ [-\d.]+', group), (chart, pattern)
    assert 'id="figure-rebalancing_alpha_pct"' in page


def _colours(png: Path) -> dict[str, float]:
    """Shares of the screenshot's pixels near white and near matplotlib's C0 and C1 colours."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3].reshape(-1, 3)
    total = len(pixels)

    def near(rgb: tuple[int, int, int], tolerance: float = 0.08) -> float:
        target = [c / 255 for c in rgb]
        close = (abs(pixels - target) <= tolerance).all(axis=1)
        return float(close.sum()) / total

    return {
        "white": near((255, 255, 255), 0.02),
        "blue": near((31, 119, 180)),
        "orange": near((255, 127, 14)),
    }


@pytest.mark.timeout(45)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        pytest.param(signal.SIGINT, True, id="ctrl-c-to-the-process-group"),
        pytest.param(signal.SIGTERM, False, id="sigterm-to-the-demo"),
    ],
)
def test_a_signal_midway_ends_with_a_summary_and_leaves_nothing_behind(
    tmp_path: Path, demo_runs: list[DemoRun], signum: signal.Signals, to_group: bool
) -> None:
    demo = DemoRun(tmp_path, "--duration", "60", "--portfolios", "2", "--seed", SEED)
    demo_runs.append(demo)
    started = demo.read_until("started", timeout=30)
    demo.note_resources(started)
    demo.read_until("rebalance", timeout=20)

    if to_group:
        os.killpg(demo.process.pid, signum)  # what a terminal does on Ctrl-C
    else:
        demo.process.send_signal(signum)

    assert demo.finish(timeout=20) == exitcodes.OK, demo.stderr()
    summary = demo.events[-1]
    assert summary["event"] == "summary"
    assert summary["ended_by"] == signum.name
    assert summary["run_seconds"] < 60
    assert summary["total"]["attempts"] >= 1
    assert_nothing_left(demo, started)


# --- prerequisites ----------------------------------------------------------------------------


def test_without_the_checkout_the_demo_says_so_and_exits_69(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(DemoOptions(headless=True), out=out, err=err, root=tmp_path)
    assert code == exitcodes.UNAVAILABLE
    assert "package.json" in err.getvalue()
    assert "./dev demo" in err.getvalue()
    assert out.getvalue() == ""


def test_without_postgresql_the_demo_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from daemon.devtools import pgserver

    def missing() -> Path:
        raise pgserver.PostgresServerError("none here")

    monkeypatch.setattr(pgserver, "find_bindir", missing)
    out, err = io.StringIO(), io.StringIO()
    assert run(DemoOptions(headless=True), out=out, err=err) == exitcodes.UNAVAILABLE
    assert "postgresql" in err.getvalue()
    assert "./dev setup" in err.getvalue()


def test_the_subcommand_parses_its_options() -> None:
    import argparse

    from daemon.cli.demo import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--portfolios", "4", "--duration", "30", "--seed", "7"])
    assert (args.portfolios, args.duration, args.seed, args.headless) == (4, 30.0, 7, False)
    defaults = parser.parse_args(["demo"])
    assert (defaults.portfolios, defaults.duration, defaults.seed) == (3, 120.0, None)
    for bad in (["--portfolios", "0"], ["--portfolios", "21"], ["--duration", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", *bad])


# --- pure parts -------------------------------------------------------------------------------


def test_portfolios_get_different_targets_that_sum_to_one() -> None:
    plans = portfolio_plans(8)
    assert len({name for name, _ in plans}) == 8
    assert len({tuple(sorted(t.items())) for _, t in plans[:6]}) == 6
    for _, targets in plans:
        assert sum(targets.values()) == 1


def test_the_walk_is_reproducible_from_its_seed_and_stays_in_bounds() -> None:
    def path(seed: int) -> list[tuple[float, list[tuple[str, Decimal, bool]]]]:
        walk = RandomWalk(["WETH", "WBTC"], WalkParams(), seed)
        relative = {"WETH": 1.0, "WBTC": 1.0}
        out = []
        for _ in range(300):
            delay = walk.delay()
            steps = walk.steps(relative)
            for step in steps:
                relative[step.symbol] *= float(step.factor)
                assert 0.5 - 1e-6 <= relative[step.symbol] <= 2.0 + 1e-6
            out.append((delay, [(s.symbol, s.factor, s.jump) for s in steps]))
            assert 1.0 <= delay <= 2.0
        return out

    assert path(5) == path(5)
    assert path(5) != path(6)
    jumps = sum(1 for _, steps in path(5) for (_, _, jump) in steps if jump)
    assert 0.15 * 600 < jumps < 0.35 * 600


@pytest.mark.parametrize("growth", ["1.01", "1.1", "1.25", "2"])
def test_amount_to_move_moves_the_pool_price_by_the_factor(growth: str) -> None:
    reserve_in, reserve_out = 9_000_000 * 10**6, 3_000 * 10**18
    amount = amount_to_move(reserve_in, Decimal(growth))
    out = get_amount_out(amount, reserve_in, reserve_out)
    # The price of the bought token, in the sold one, before and after (exact pool math).
    before = Decimal(reserve_in) / Decimal(reserve_out)
    after = Decimal(reserve_in + amount) / Decimal(reserve_out - out)
    assert after / before == pytest.approx(Decimal(growth), rel=Decimal("1e-9"))
    assert amount_to_move(reserve_in, Decimal(1)) == 0


def event(portfolio: str, status: str, **fields: Any) -> RebalanceEvent:
    values: dict[str, Any] = {
        "id": 1,
        "portfolio": portfolio,
        "status": status,
        "finished_at": None,
        "tx_hash": None,
        "on_chain": False,
        "block_number": None,
        "gas_used": None,
        "gas_cost_usd": None,
        "drift_before": None,
        "drift_after": None,
        "slippage": None,
        "legs": 1,
        "error": None,
    }
    values.update(fields)
    return RebalanceEvent(**values)


def test_the_summary_counts_exactly() -> None:
    events = [
        event(
            "a",
            "SUCCESS",
            on_chain=True,
            gas_used=500_000,
            gas_cost_usd=Decimal("1.25"),
            drift_before=Decimal("0.2"),
            drift_after=Decimal("0.01"),
            slippage=Decimal("0.001"),
        ),
        event(
            "a",
            "SUCCESS",
            on_chain=True,
            gas_used=600_000,
            gas_cost_usd=Decimal("1.5"),
            drift_before=Decimal("0.3"),
            drift_after=Decimal("0.03"),
            slippage=Decimal("0.003"),
        ),
        event("a", "FAILED", gas_used=100_000, gas_cost_usd=Decimal("0.25"), error="reverted"),
        event("b", "SKIPPED", error="price impact"),
    ]
    summary = summarize(
        ["a", "b", "c"],
        events,
        ended_by="duration",
        run_seconds=10,
        setup_seconds=2,
        price_moves=7,
        pending=0,
        first_success_seconds=3.5,
    )
    a, b, c = summary.portfolios
    assert (a.attempts, a.successes, a.failures, a.on_chain) == (3, 2, 1, 2)
    assert a.gas_used == 1_200_000
    assert a.gas_cost_usd == Decimal("3.00")
    assert a.avg_slippage == Decimal("0.002")
    assert a.avg_drift_before == Decimal("0.25")
    assert a.avg_drift_after == Decimal("0.02")
    assert a.success_rate == Decimal(2) / 3
    assert (b.attempts, b.successes, b.success_rate) == (1, 0, 0)
    assert (c.attempts, c.success_rate, c.avg_slippage) == (0, None, None)
    assert summary.total.attempts == 4
    assert summary.total.gas_cost_usd == Decimal("3.00")


def test_slippage_is_read_from_the_executor_s_per_leg_outputs() -> None:
    legs = [
        {"quoted_out": "1000", "actual_out": "990"},
        {"quoted_out": "2000", "actual_out": "2000"},
        {"quoted_out": "500", "actual_out": None},  # not seen in the receipt
        "garbage",
    ]
    assert leg_slippages(legs) == [Decimal("0.01"), Decimal(0)]
    assert leg_slippages(None) == []


@pytest.mark.chain
async def test_the_market_moves_the_feeds_with_the_pools(chain: Any, devnet: Any) -> None:
    """After a market move the token's mock feed answers the pool's new price; a refresh posts
    a new round for every feed (so none goes stale in a long demo)."""
    import trio

    from daemon.abi import encode_call
    from daemon.devtools.devnet_records import FEED_DECIMALS, devnet_key
    from daemon.devtools.market import Step, Trader

    async def answer(symbol: str) -> tuple[int, int]:
        raw = await chain.call(devnet.feeds[symbol], encode_call("latestRoundData()"))
        round_id = int.from_bytes(raw[:32], "big")
        return round_id, int.from_bytes(raw[32:64], "big", signed=True)

    with trio.fail_after(30):
        trader = Trader(chain, devnet, devnet_key("feed test trader"), feed_refresh=0.0)
        await trader.prepare({"USDC": 10**12, "WETH": 10**21})
        move = await trader.move(Step("WETH", Decimal("1.2"), jump=False))
        assert move is not None
        _, weth = await answer("WETH")
        assert weth == int(move.price_after.scaleb(FEED_DECIMALS))
        assert abs(move.price_after / move.price_before - Decimal("1.2")) < Decimal("0.01")
        before = {symbol: await answer(symbol) for symbol in devnet.feeds}
        await trader.refresh_feeds()
        for symbol, (round_id, value) in before.items():
            assert await answer(symbol) == (round_id + 1, value)
