"""The reliability suite's referee: invariant checks after each fault scenario, and the report.

After a scenario the suite asks the chain and the database, never the daemon's own opinion:

* ``one_terminal_row``: every attempt has exactly one terminal ``rebalance_log`` row (no PENDING).
* ``rows_tell_the_truth``: SUCCESS ⇔ every planned transaction has a CONFIRMED intent whose
  receipt on chain succeeded; PARTIAL ⇒ some swap mined, not all; FAILED ⇒ no swap of the
  attempt mined successfully. Every CONFIRMED/REVERTED intent agrees with its on-chain receipt.
* ``no_live_intent``: no SIGNED/BROADCAST intent is left (every nonce settled).
* ``superseded_versions_not_mined``: no version recorded REPLACED or DROPPED is mined (else a
  FAILED row could hide a trade).
* ``no_nonce_gap``: the signer's mined nonce equals its pending nonce (nothing queued or stuck).
* ``every_tx_accounted``: every transaction the signer mined since the scenario began is one of
  our recorded intents (except those the scenario itself sent as "another sender").
* ``swaps_at_most_once``: at most ``max_swaps`` successful swap transactions were mined (one per
  market move the scenario made).

The records of every scenario are written at the end of the session to the file named by
``$TEST_RELIABILITY_REPORT`` (``./dev test`` sets ``docs/reliability.md``), and only when every
collected scenario ran: a developer's partial run (``-k``, one file) writes nothing.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from daemon import db as dbm
from daemon.abi import hex_int
from daemon.address import to_address
from daemon.chain import ChainClient

REPORT_ENV = "TEST_RELIABILITY_REPORT"


@attrs.define
class Check:
    name: str
    ok: bool
    detail: str = ""


@attrs.define
class Scenario:
    """One fault scenario's record (filled by the test, written to the report)."""

    name: str
    finding: str = ""
    """Which finding of issue 10 it reproduces (e.g. "1", "7"), or "" for extra coverage."""
    injected: str = ""
    """What was done to the daemon, in words."""
    faults: int = 0
    """Faults injected (proxy rules applied, kills, outages...)."""
    kills: int = 0
    """SIGKILLs of a real `driftd run` survived."""
    outcome: str = ""
    """What the daemon did about it (statuses of the rows, in words)."""
    checks: list[Check] = attrs.Factory(list)
    passed: bool | None = None
    seconds: float = 0.0

    @property
    def violations(self) -> int:
        return sum(1 for c in self.checks if not c.ok)


@attrs.define
class BadInput:
    """One case of the bad-input catalogue (filled by the test, written to the report)."""

    name: str
    area: str = ""
    """Where the input comes from: config, env, cli, delegation, socket, coingecko, json-rpc."""
    given: str = ""
    """The input, in words (never a secret)."""
    expected: str = ""
    """The answer it must get: an exit code or error code, and the words naming the problem."""
    observed: str = ""
    """The answer it got."""
    unharmed: str = ""
    """What was checked to be unchanged afterwards (stored rows, the running daemon)."""
    passed: bool | None = None


@attrs.define
class Recorder:
    scenarios: list[Scenario] = attrs.Factory(list)
    expected: int = 0
    bad_inputs: list[BadInput] = attrs.Factory(list)
    expected_bad_inputs: int = 0


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDER] = Recorder()


def pytest_collection_modifyitems(items: list[pytest.Item], config: pytest.Config) -> None:
    config.stash[_RECORDER].expected = sum(
        1 for item in items if item.get_closest_marker("reliability") is not None
    )
    config.stash[_RECORDER].expected_bad_inputs = sum(
        1 for item in items if item.get_closest_marker("bad_input") is not None
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    recorder = session.config.stash[_RECORDER]
    target = os.environ.get(REPORT_ENV)
    if not target or not recorder.scenarios or len(recorder.scenarios) < recorder.expected:
        return
    if len(recorder.bad_inputs) < recorder.expected_bad_inputs:
        return
    report = Path(target)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(recorder.scenarios) + render_catalogue(recorder.bad_inputs))


_RECORDER = pytest.StashKey[Recorder]()


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The current scenario's record; its pass/fail comes from the test's own outcome."""
    record = Scenario(name=request.node.name)
    started = dt.datetime.now(dt.UTC)
    yield record
    record.seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    report = getattr(request.node, "rep_call", None)
    record.passed = bool(report is not None and report.passed and record.violations == 0)
    request.config.stash[_RECORDER].scenarios.append(record)


@pytest.fixture
def bad_input(request: pytest.FixtureRequest) -> Iterator[BadInput]:
    """The current catalogue case's record; it passes when the test does."""
    record = BadInput(name=request.node.name)
    yield record
    report = getattr(request.node, "rep_call", None)
    record.passed = bool(report is not None and report.passed)
    request.config.stash[_RECORDER].bad_inputs.append(record)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    if report.skipped and item.get_closest_marker("bad_input") is not None:
        # A skipped case (e.g. one that needs root) is not waited for by the report.
        item.config.stash[_RECORDER].expected_bad_inputs -= 1
    return report


def render(scenarios: Iterable[Scenario]) -> str:
    rows = list(scenarios)
    faults = sum(s.faults for s in rows)
    kills = sum(s.kills for s in rows)
    violations = sum(s.violations for s in rows)
    failed = [s.name for s in rows if not s.passed]
    lines = [
        "# Reliability report",
        "",
        "Generated by the fault-injection suite (`tests/test_reliability*.py`) in the README's "
        "test command, against a real anvil and a real PostgreSQL. Each scenario injects its "
        "faults into a running `driftd`, then checks the invariants below from the chain and "
        "the database (see `tests/reliability.py`).",
        "",
        f"- scenarios: **{len(rows)}** (failed: {len(failed)})",
        f"- faults injected: **{faults}**",
        f"- SIGKILLs survived: **{kills}**",
        f"- invariant violations: **{violations}**",
        "",
        "Invariants: one terminal row per attempt; rows tell the truth (SUCCESS ⇔ every planned "
        "transaction mined successfully, PARTIAL ⇒ some swap mined, FAILED ⇒ none); no live "
        "intent left; no version recorded as replaced or dropped was mined; no nonce gap; "
        "every mined transaction of the signer is a recorded intent; "
        "each market move traded at most once.",
        "",
        "| scenario | finding | injected | outcome | checks | result |",
        "|---|---|---|---|---|---|",
    ]
    for s in rows:
        checks = ", ".join(f"{c.name} {'✓' if c.ok else '✗ ' + c.detail}" for c in s.checks)
        result = "pass" if s.passed else "**FAIL**"
        lines.append(
            f"| `{s.name}` | {s.finding or '–'} | {_cell(s.injected)} | {_cell(s.outcome)} "
            f"| {_cell(checks)} | {result} ({s.seconds:.1f} s) |"
        )
    lines.append("")
    return "\n".join(lines)


def render_catalogue(cases: Iterable[BadInput]) -> str:
    rows = sorted(cases, key=lambda c: (c.area, c.name))
    failed = [c for c in rows if not c.passed]
    areas: dict[str, int] = {}
    for case in rows:
        areas[case.area] = areas.get(case.area, 0) + 1
    lines = [
        "# Bad-input catalogue",
        "",
        "Generated by `tests/test_bad_input*.py` in the same run. Each case feeds one hostile or "
        "careless input to the real thing (the `driftd` CLI, the configuration loader, the "
        "control socket, the CoinGecko and JSON-RPC clients against loopback servers speaking "
        "the real wire format), checks the answer names the problem with the right sysexits "
        "code or error code, and that nothing already running or stored changed.",
        "",
        f"- cases: **{len(rows)}** (failed: {len(failed)})",
        "- by area: " + ", ".join(f"{area} {count}" for area, count in sorted(areas.items())),
        "",
        "| area | case | input | expected | observed | unharmed | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        lines.append(
            f"| {c.area} | `{c.name}` | {_cell(c.given)} | {_cell(c.expected)} "
            f"| {_cell(c.observed)} | {_cell(c.unharmed)} | {'pass' if c.passed else '**FAIL**'} |"
        )
    lines.append("")
    return "\n" + "\n".join(lines)


def _cell(text: str) -> str:
    """One table cell: pipes escaped, newlines as spaces, other control characters as ``\\xNN``
    (hostile inputs are quoted here)."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in text)


async def check_invariants(
    chain: ChainClient,
    db: dbm.Database,
    signer: str,
    *,
    since_block: int,
    max_swaps: int | None = None,
    foreign_hashes: Iterable[str] = (),
) -> list[Check]:
    """Every invariant of the module docstring, from the chain and the database."""
    checks: list[Check] = []
    rows = list(await db.rebalance_history(limit=10_000))
    pending = [r.id for r in rows if r.status == "PENDING"]
    checks.append(Check("one_terminal_row", not pending, f"PENDING rows {pending}"))

    truth: list[str] = []
    successful_swaps = 0
    for row in rows:
        intents = await db.intents_for_rebalance(row.id)
        mined = [i for i in intents if i.status in ("CONFIRMED", "REVERTED")]
        for intent in mined:
            receipt = await chain.get_transaction_receipt(intent.tx_hash)
            if receipt is None:
                truth.append(f"intent {intent.id} {intent.status} has no receipt on chain")
            elif receipt.succeeded != (intent.status == "CONFIRMED"):
                truth.append(
                    f"intent {intent.id} is {intent.status}, chain status {receipt.status}"
                )
        ok_calls = {
            i.call_index for i in mined if i.status == "CONFIRMED" and i.purpose != "cancel"
        }
        swaps = [i for i in mined if i.status == "CONFIRMED" and i.purpose == "swap"]
        successful_swaps += len(swaps)
        if row.status == "SUCCESS" and (
            row.planned_txs is None or len(ok_calls) != row.planned_txs
        ):
            truth.append(f"row {row.id} SUCCESS with {len(ok_calls)}/{row.planned_txs} mined")
        if row.status == "FAILED" and swaps:
            truth.append(f"row {row.id} FAILED but {len(swaps)} swap(s) mined")
        if row.status == "PARTIAL" and not swaps:
            truth.append(f"row {row.id} PARTIAL with no swap mined")
        if row.status in ("SKIPPED", "DRY_RUN") and mined:
            truth.append(f"row {row.id} {row.status} but has mined transactions")
    checks.append(Check("rows_tell_the_truth", not truth, "; ".join(truth)))

    live = await db.intents_by_status("SIGNED", "BROADCAST")
    checks.append(Check("no_live_intent", not live, f"live intents {[i.id for i in live]}"))

    superseded_mined = [
        f"intent {intent.id} {intent.status} is mined"
        for intent in await db.intents_by_status("REPLACED", "DROPPED")
        if await chain.get_transaction_receipt(intent.tx_hash) is not None
    ]
    checks.append(
        Check("superseded_versions_not_mined", not superseded_mined, "; ".join(superseded_mined))
    )

    mined_nonce = await chain.get_transaction_count(signer, "latest")
    pending_nonce = await chain.get_transaction_count(signer, "pending")
    checks.append(
        Check(
            "no_nonce_gap",
            mined_nonce == pending_nonce,
            f"mined {mined_nonce}, pending {pending_nonce}",
        )
    )

    recorded = {
        i.tx_hash.lower()
        for i in await db.intents_by_status(
            "CONFIRMED", "REVERTED", "DROPPED", "REPLACED", "SIGNED", "BROADCAST"
        )
    }
    foreign = {h.lower() for h in foreign_hashes}
    unaccounted: list[str] = []
    head = hex_int(await chain.request("eth_blockNumber"))
    me = to_address(signer)
    for number in range(since_block + 1, head + 1):
        block = await chain.request("eth_getBlockByNumber", [hex(number), True])
        for tx in block["transactions"]:
            if to_address(tx["from"]) == me:
                tx_hash = str(tx["hash"]).lower()
                if tx_hash not in recorded and tx_hash not in foreign:
                    unaccounted.append(tx_hash)
    checks.append(Check("every_tx_accounted", not unaccounted, f"unrecorded {unaccounted}"))

    if max_swaps is not None:
        checks.append(
            Check(
                "swaps_at_most_once",
                successful_swaps <= max_swaps,
                f"{successful_swaps} swap transactions mined for {max_swaps} market move(s)",
            )
        )
    return checks
