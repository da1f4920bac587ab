"""``driftd report --format html`` on the history of a real devnet run (``driftd demo --report``,
which writes each portfolio's report before it deletes its database), opened in headless
Chromium: the page needs no network, and its charts render with the expected series."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import exitcodes

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SERIES = {
    "allocation": ["weight-USDC", "target-USDC", "weight-WETH", "target-WETH"],
    "value": ["portfolio-value", "buy-and-hold-value"],
    "drift": ["max-drift", "threshold", "rebalances"],
    "costs": ["cost-gas", "cost-fees", "cost-impact", "cost-slippage"],
}


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short demo run (one portfolio, a seed that trades early), its report kept."""
    reports = tmp_path_factory.mktemp("reports")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "daemon", "demo", "--headless", "--portfolios", "1"),
            *("--duration", "12", "--seed", "3", "--report", str(reports)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == exitcodes.OK, result.stderr
    assert "report (driftd report --format html)" in result.stderr, result.stderr
    (page,) = reports.glob("*.html")
    return page


@pytest.mark.chain
@pytest.mark.db
@pytest.mark.timeout(150)
def test_the_html_report_of_a_devnet_run_renders_its_charts_in_chromium(
    demo_report: Path, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (./dev installs Debian's chromium)")
    page = demo_report.read_text()
    # Self-contained: nothing is fetched (the SVG namespace URIs are names, not requests).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    for chart, ids in SERIES.items():
        figure = re.search(rf'<figure id="chart-{chart}">(.*?)</figure>', page, re.S)
        assert figure is not None, chart
        svg = figure.group(1)
        for gid in ids:
            element = re.search(rf'<g id="{re.escape(gid)}">(.*?)</g>', svg, re.S)
            assert element is not None, (chart, gid)
            # Drawn: a path with coordinates, not an empty group.
            assert re.search(r'<path [^>]*d="M [-\d.]+ [-\d.]+', element.group(1)), (chart, gid)
    assert 'id="figure-rebalancing_alpha_pct"' in page

    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,3000",
            demo_report.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
    colours = _colours(screenshot)
    # Rendered charts, not a blank page: matplotlib's blue and orange series and a white page.
    assert colours["white"] > 0.5
    assert colours["blue"] > 0.0005
    assert colours["orange"] > 0.0002


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
