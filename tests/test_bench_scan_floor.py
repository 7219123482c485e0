"""bench/scan_floor.py on a small random set: every scan reports its CPU against the float32 scan of the same run,
the exact one is its own baseline, and a shortlist rescored exactly finds what the exact scan finds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_the_scans_are_timed_against_the_exact_one_and_rescoring_recovers_its_top(tmp_path: Path) -> None:
    vectors = np.random.default_rng(1).standard_normal((3000, 64)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "report.json"
    args = ["--vectors", str(tmp_path / "v.npy"), "--queries", "20", "--shortlist", "3000", "--out", str(out)]
    subprocess.run([sys.executable, str(ROOT / "bench" / "scan_floor.py"), *args], check=True, capture_output=True)
    report = json.loads(out.read_text())
    methods = report["methods"]
    assert set(methods) == {"flat", "sq8", "sq8_rescored", "binary_rescored"}
    assert methods["flat"] == {**methods["flat"], "ratio_to_flat": 1.0, "recall_at_10": 1.0}
    assert all(m["cpu_ms_p50"] > 0 for m in methods.values())
    # a shortlist of every vector, rescored exactly, is the exact top 10 whatever the codes got wrong
    assert methods["sq8_rescored"]["recall_at_10"] == 1.0 and methods["binary_rescored"]["recall_at_10"] == 1.0
    assert methods["sq8"]["recall_at_10"] > 0.8  # 8-bit codes of 64-d vectors keep most of the top 10
    assert report["passages"] == 3000 and "cpu_flags" in report
