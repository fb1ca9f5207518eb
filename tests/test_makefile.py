"""The Makefile's destructive targets: what they delete, and what they keep."""

import subprocess

from tests.helpers import REPO


def make(*args):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)


def test_clean_keeps_the_store_and_the_runs_and_clean_store_says_what_it_deletes(tmp_path):
    root = tmp_path / "root"
    for folder in ("cache/x", "tables/smoke", "report/smoke", "hydra/2026-12-01", "codecarbon", "search",
                   "store/dense/0123456789abcdef", "store/dense/0123456789abcdef.partial", "mlartifacts/1"):
        (root / folder).mkdir(parents=True)
        (root / folder / "f").write_text("x")
    (root / "mlflow.db").write_text("runs")
    r = make("clean", f"ROOT={root}")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in root.iterdir()) == ["mlartifacts", "mlflow.db", "store"]
    r = make("clean-store", f"ROOT={root}")
    assert r.returncode == 0 and f"deleting {root}/store: 1 dense network(s), " in r.stdout, r.stdout + r.stderr
    assert sorted(p.name for p in root.iterdir()) == ["mlartifacts", "mlflow.db"]
    assert "no store at" in make("clean-store", f"ROOT={root}").stdout
