"""The benchmark harness runs in its quickest mode and produces numbers (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The harness runs real servers for tens of seconds: `-m "not slow"` leaves these out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "benchmarks.run", "--quick", "--arms", "D,N,G"]
    # Arm Gb: chatd's committed src/ exported and run beside G.
    argv += ["--baseline", "HEAD", "--out", str(out)]
    done = subprocess.run(
        argv,
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
    assert latency["G"]["p50_minus_N"] is not None
    assert latency["G"]["errors"] == 0
    assert latency["N"]["errors"] == 0

    streaming = results["streaming"]["summary"]["G"]
    assert streaming["ttft_p50"] > 0
    assert streaming["chunks"] == streaming["expected"] > 0

    assert results["throughput"]["summary"]["G"]["rps"] > 0
    assert results["throughput"]["summary"]["N"]["rps"] > 0
    assert results["streaming"]["summary"]["N"]["one_for_one"]
    assert results["open_streams"]["G"]["levels"]
    assert results["idle_rss"]["G"]["rss_mb"] > 0
    assert set(results["history"]["summary"]) >= {"G@10", "G@100"}
    assert results["store"]["G"]["10"]["store_ms"] > 0

    report = (out / "report.md").read_text()
    assert "Against the targets" in report
    assert "G−D" in report

    # Gb: the baseline tree really imported, and measured wherever G is.
    baseline = results["baseline"]
    assert baseline["sha"]
    assert "/baseline/src/chatd/" in baseline["chatd_imported_from"]
    assert list(results["arms"]) == ["D", "N", "G", "Gb"]
    assert latency["Gb"]["p50"] > 0
    assert latency["Gb"]["errors"] == 0
    assert latency["G"]["p50_minus_Gb"] is not None
    assert results["streaming"]["summary"]["G"]["ttft_p50_minus_Gb"] is not None
    assert results["throughput"]["summary"]["G"]["ratio_to_Gb"] > 0
    assert results["throughput"]["summary"]["G"]["cpu_ratio_to_Gb"] > 0
    assert results["idle_rss"]["Gb"]["rss_mb"] > 0
    assert results["open_streams"]["Gb"]["levels"]
    assert set(results["history"]["summary"]) >= {"Gb@10", "Gb@100"}
    assert results["store"]["Gb"]["10"]["store_ms"] > 0
    assert "Against the baseline (same run)" in report
    assert f"Gb (`{baseline['sha']}`)" in report


@pytest.mark.timeout(150)
def test_stream_memory_ranks_what_a_stream_holds(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = [sys.executable, "-m", "benchmarks.stream_memory", "--levels", "2,6"]
    argv += ["--chunks", "60", "--delay-ms", "300", "--settle", "0.5", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["flowing"][1:] == [2, 6]
    # At least the server's own task per connection (uvicorn's request cycle).
    assert sum(per for _, per in result["tasks_per_stream"]) >= 1
    assert result["rss_kib_per_stream"] is not None
    assert result["traced_kib_per_stream"] > 0
    assert result["by_line"]
    assert result["by_own_line"]
    assert "Memory per open stream" in done.stdout
