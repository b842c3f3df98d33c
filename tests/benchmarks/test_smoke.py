"""The benchmark harness runs in its quickest mode and produces numbers (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--arms", "D,G", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    latency = results["latency"]["summary"]
    assert latency["D"]["p50"] > 0
    assert latency["G"]["p50"] > 0
    assert latency["G"]["p50_minus_D"] is not None
    assert latency["G"]["errors"] == 0

    streaming = results["streaming"]["summary"]["G"]
    assert streaming["ttft_p50"] > 0
    assert streaming["chunks"] == streaming["expected"] > 0

    assert results["throughput"]["summary"]["G"]["rps"] > 0
    assert results["open_streams"]["G"]["levels"]
    assert results["idle_rss"]["G"]["rss_mb"] > 0
    assert set(results["history"]["summary"]) >= {"G@10", "G@100"}
    assert results["store"]["G"]["10"]["store_ms"] > 0

    report = (out / "report.md").read_text()
    assert "Against DESIGN.md §8" in report
    assert "G−D" in report
