"""The benchmark's plumbing at tiny sizes: it runs and reports every figure (not its speed)."""

import json
import subprocess
import sys

from tests.conftest import REPO

KEYS = {"trainer_img_s", "reference_img_s", "trainer_vs_reference", "fraction_of_peak", "criteria_seconds",
        "tracking_seconds", "device"}


def test_bench_runs_and_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--model", "8", "--batch-size", "8", "--steps", "2",
                        "--repeats", "1", "--workers", "0", "--criteria-depth", "14", "--scoring-size", "20",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert KEYS <= set(figures)
    assert set(figures["criteria_seconds"]) == {"random", "l1", "hrank", "expectabs", "pls", "kl", "snip",
                                                "grasp", "synflow"}
    assert figures["trainer_img_s"] > 0 and figures["reference_img_s"] > 0 and 0 < figures["fraction_of_peak"]
    assert "(a) trainer" in r.stdout and "(d) MLflow + codecarbon" in r.stdout
