"""The callgrind instruction count runs on arm N, reached through `benchmarks.run --only`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The harness runs real servers for tens of seconds: `-m "not slow"` leaves these out.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_instructions_per_request_on_the_floor(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        reason = "valgrind is not installed (apt-get install valgrind)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the callgrind smoke test", pytrace=False)
        pytest.skip(reason)
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "benchmarks.run", "--only", "instructions", "--quick"]
    argv += ["--arms", "N", "--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=85)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "instructions.json").read_text())

    n = results["arms"]["N"]
    # Requests sent while instrumentation was off are not counted at all.
    assert n["counted_while_off"] == 0
    figures = results["summary"]["N"]
    assert figures["request"] > 0.5
    assert figures["stream"] > figures["request"]
    assert figures["chunk"] > 0
    assert results["breakdown"]["N"]["objects"]
    assert "Instructions per request (callgrind)" in (out / "instructions.md").read_text()
