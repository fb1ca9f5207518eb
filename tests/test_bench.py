"""The benchmark's plumbing at tiny sizes: it runs and reports every figure (not its speed)."""

import json
import subprocess
import sys

import pytest
import torch

from lottery.pruning.criteria import CRITERIA
from lottery.training.devices import precision
from tests.helpers import REPO

KEYS = {"trainer_img_s", "trainer_fp32_img_s", "reference_img_s", "trainer_vs_reference", "amp_speedup",
        "fraction_of_peak", "fp32_fraction_of_peak", "dtype", "criteria_seconds", "tracking_seconds", "device"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One run of the benchmark at tiny sizes, read by every test here: (its output, its figures)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--device", "cpu", "--model", "8", "--batch-size", "8",
                        "--steps", "2", "--repeats", "1", "--workers", "0", "--criteria-depth", "14", "--scoring-size",
                        "20", "--no-log-model", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads(out.read_text())


def test_bench_runs_and_writes_every_key(bench):
    r, figures = bench
    assert KEYS <= set(figures)
    assert set(figures["criteria_seconds"]) == set(CRITERIA)  # every registered criterion is timed
    assert figures["trainer_img_s"] > 0 and figures["reference_img_s"] > 0 and 0 < figures["fraction_of_peak"]
    assert "(a) trainer" in r.stdout and "(d) MLflow + codecarbon" in r.stdout


def test_bench_reports_the_amp_speedup_as_the_ratio_of_its_two_trainer_rates(bench):
    _, f = bench
    assert f["amp_speedup"] == pytest.approx(f["trainer_img_s"] / f["trainer_fp32_img_s"])
    assert f["trainer_vs_reference"] == pytest.approx(f["trainer_img_s"] / f["reference_img_s"])
    assert f["dtype"] == precision(torch.device("cpu"), "auto")


def test_gpu_bench_runs_on_cpu_at_tiny_sizes(tmp_path):
    from benchmarks.gpu import main

    out = tmp_path / "gpu.json"  # in this process; its two concurrent trials are processes of their own
    assert main(["--device", "cpu", "--model", "8", "--batch-size", "4", "--steps", "1", "--concurrency", "2",
                 "--no-compile", "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    assert set(f["one_trial_img_s"]) == {"eager_fp32", "eager_bf16"}
    assert set(f["concurrent_img_s"]) == {"2"} and f["concurrent_img_s"]["2"] > 0
    assert "table2" in f["projected_gpu_hours"] and "table5" not in f["projected_gpu_hours"]  # Table 4's runs


def test_gpu_projection_counts_every_training_of_each_sweep():
    from benchmarks.gpu import PAPER_EPOCHS, PAPER_TRAIN_IMAGES, projection

    r32, r56 = 1000.0, 500.0
    hours, total = projection({32: r32, 56: r56}, seeds=2)
    epoch_h32 = PAPER_TRAIN_IMAGES / r32 / 3600
    epoch_h56 = PAPER_TRAIN_IMAGES / r56 / 3600
    # Table 2: 10 tickets of 200 epochs per seed, one dense ResNet32 per seed.
    assert hours["table2"] == pytest.approx((2 * 10 + 2) * PAPER_EPOCHS * epoch_h32)
    # Table 1: 5 criteria rewound to theta_0/25/50/75 train 200 + 175 + 150 + 125 epochs.
    assert hours["table1"] == pytest.approx(2 * (5 * (200 + 175 + 150 + 125) + PAPER_EPOCHS) * epoch_h32)
    # Table 4: 3 ResNet32 and 4 ResNet56 tickets, one dense network of each depth per seed.
    assert hours["table4"] == pytest.approx(2 * PAPER_EPOCHS * (4 * epoch_h32 + 5 * epoch_h56))
    # All tables share the dense ResNet32 (and ResNet56) of each seed: counted once in the total.
    dense = 2 * PAPER_EPOCHS * (epoch_h32 + epoch_h56)
    tables_without_dense = sum(hours.values()) - 2 * PAPER_EPOCHS * (6 * epoch_h32 + epoch_h56)  # six sweeps train ResNet32
    assert total == pytest.approx(tables_without_dense + dense)


def test_gpu_check_on_a_machine_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check runs the real checks")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--json", str(tmp_path / "g.json")], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0 and r.stdout.strip() == ("gpu-check: no CUDA device on this machine; run `make gpu-check` "
                                                      "on a GPU host (nothing checked here)")
    assert not (tmp_path / "g.json").exists()
