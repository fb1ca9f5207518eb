"""The benchmark's plumbing at tiny sizes: it runs and reports every figure (not its speed)."""

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from lottery.pruning.criteria import CRITERIA
from lottery.training.devices import precision, restored
from tests.helpers import REPO, write_folder

KEYS = {"trainer_img_s", "trainer_fp32_img_s", "reference_img_s", "trainer_vs_reference", "amp_speedup", "trainer_grid_img_s",
        "fraction_of_peak", "fp32_fraction_of_peak", "dtype", "criteria_seconds", "tracking_seconds", "device",
        "fast_path"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One run of the benchmark at tiny sizes, read by every test here: (its output, its figures)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--device", "cpu", "--model", "8", "--batch-size", "8",
                        "--steps", "2", "--repeats", "1", "--workers", "0", "--criteria-depth", "14", "--scoring-size",
                        "20", "--no-log-model", "--compile-backend", "eager", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads(out.read_text())


def test_bench_runs_and_writes_every_key(bench):
    r, figures = bench
    assert KEYS <= set(figures)
    assert set(figures["criteria_seconds"]) == set(CRITERIA)  # every registered criterion is timed
    assert figures["trainer_img_s"] > 0 and figures["reference_img_s"] > 0 and 0 < figures["fraction_of_peak"]
    assert "(a) trainer" in r.stdout and "(d) MLflow + codecarbon" in r.stdout
    # a paper-length training: the compiled paths are timed too (the eager backend: a compile in no time)
    assert "the trainer's path: " in r.stdout and "timed here: eager channels_last " in figures["fast_path"]
    assert "compiled contiguous" in figures["fast_path"] and "a compile " in figures["fast_path"]
    assert set(figures["trainer_grid_img_s"]) == {"eager_channels_last", "eager_contiguous", "compiled_channels_last",
                                                  "compiled_contiguous"} and min(figures["trainer_grid_img_s"].values()) > 0


def test_bench_reports_the_amp_speedup_as_the_ratio_of_its_two_trainer_rates(bench):
    _, f = bench
    assert f["amp_speedup"] == pytest.approx(f["trainer_img_s"] / f["trainer_fp32_img_s"])
    assert f["trainer_vs_reference"] == pytest.approx(f["trainer_img_s"] / f["reference_img_s"])  # one round
    assert f["trainer_vs_reference_per_repeat"] == [pytest.approx(f["trainer_vs_reference"])]
    assert f["amp_speedup_per_repeat"] == [pytest.approx(f["amp_speedup"])]
    assert f["trainer_fp32_vs_reference_per_repeat"] == [pytest.approx(f["trainer_fp32_vs_reference"])]
    assert f["rounds_img_s"]["reference"] == [f["reference_img_s"]]  # every variant's rate of each round
    assert set(f["rounds_img_s"]) == {*f["trainer_grid_img_s"], "fp32", "reference"}
    assert f["dtype"] == precision(torch.device("cpu"), "auto")
    settled = f["fast_path"].split(" (")[0].replace(" ", "_")  # the trainer's rate is its path's cell of the grid
    assert f["trainer_img_s"] == f["trainer_grid_img_s"][settled]


def test_a_ratio_pairs_the_rates_of_one_round_not_the_medians_of_all():
    from benchmarks.bench import ratio

    # the host's speed drifted between rounds; in each round the trainer ran 1x, 2x and 1x the loop,
    # which the medians of the rates alone (200 / 100) would call 2x
    assert ratio([100.0, 200.0, 400.0], [100.0, 100.0, 400.0]) == (1.0, [1.0, 2.0, 1.0])


def test_each_round_times_the_headline_ratios_rates_back_to_back_before_the_rest_of_the_grid(monkeypatch):
    from benchmarks import bench

    order = []
    monkeypatch.setattr(bench, "reference_loader", lambda *a: None)
    monkeypatch.setattr(bench, "reference_rate", lambda *a: order.append("reference") or 1.0)
    monkeypatch.setattr(bench, "trainer_rate", lambda args, data, device, amp, r, **path: order.append(
        (amp, bench.cell(bench.FastPath(path["channels_last"], path["compile"])))) or 1.0)
    args = SimpleNamespace(repeats=2, amp="bf16", compile_backend="eager")
    settled = bench.FastPath(channels_last=False, compile=True)
    grid = [bench.FastPath(cl, c) for c in (False, True) for cl in (True, False)]
    out = bench.rates(args, None, None, settled, grid)
    first = [("bf16", "compiled_contiguous"), ("off", "compiled_contiguous"), "reference"]
    rest = [("bf16", "eager_channels_last"), ("bf16", "eager_contiguous"), ("bf16", "compiled_channels_last")]
    assert order == 2 * (first + rest)
    assert set(out) == {"compiled_contiguous", "fp32", "reference", "eager_channels_last", "eager_contiguous",
                        "compiled_channels_last"} and all(v == [1.0, 1.0] for v in out.values())


@pytest.mark.parametrize("argv, says", [
    (["--repeats", "0"], "--repeats: '0' is not a whole number >= 1"),
    (["--steps", "2", "--batch-size", "16"], "--data: asked for 32 examples, the split has only 18; lower --steps or "
                                             "--batch-size"),
])
def test_bad_bench_arguments_stop_in_one_line_before_any_timing(argv, says, tmp_path):
    root = write_folder(tmp_path / "data")  # 18 training images: fewer than a timed epoch's
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--device", "cpu", "--data", str(root),
                        "--root", str(tmp_path / "store"), *argv], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr and not r.stdout


def test_gpu_bench_runs_on_cpu_at_tiny_sizes(tmp_path):
    from benchmarks.gpu import main

    out = tmp_path / "gpu.json"  # in this process; its two concurrent trials are processes of their own
    assert main(["--device", "cpu", "--model", "8", "--batch-size", "4", "--steps", "1", "--concurrency", "2",
                 "--no-compile", "--shared-seconds", "0.1", "--json", str(out)]) == 0
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


def test_the_plain_loop_runs_with_torchs_defaults_and_the_settings_come_back():
    from benchmarks.bench import plain

    with restored():
        torch.use_deterministic_algorithms(True)  # what a trial's configure leaves in the process
        torch.backends.cudnn.benchmark = False
        with plain():
            assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark


def test_concurrent_workers_are_timed_only_after_every_one_has_warmed_up():
    from benchmarks.gpu import trainer_run

    waited = []
    timed = trainer_run("cpu", 8, 4, 2, {"amp": "off"}, timed_epochs=2, warmed=lambda: waited.append(time.time()))
    assert len(waited) == 1 and waited[0] <= timed.began < timed.ended  # the barrier, then the timed epochs
    assert timed.img_s > 0 and timed.path == "no"


def test_the_plain_loop_trains_with_tf32_off_as_the_trainer_does(monkeypatch):
    from benchmarks import bench

    class Spy(torch.nn.Module):
        """A network that reads the TF32 switches in the loop, at each forward pass."""

        def __init__(self):
            super().__init__()
            self.fc, self.seen = torch.nn.Linear(3 * 32 * 32, 10), []

        def forward(self, x):
            self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return self.fc(x.flatten(1))

    spy = Spy()
    monkeypatch.setattr(bench, "resnet", lambda depth, shape: spy)
    loader = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    with restored():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # cuDNN's is torch's default
        assert bench.reference_rate(SimpleNamespace(model=8, batch_size=4), loader, torch.device("cpu")) > 0
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # put back after the loop
    assert spy.seen == [(False, False)] * 2  # both epochs' steps


def test_a_worker_that_dies_before_the_barrier_stops_the_others_in_one_line(capsys):
    import threading

    from benchmarks.gpu import concurrent_rate

    got = []  # depth 7 is no CIFAR ResNet: each worker fails building it, before the barrier
    worker = threading.Thread(target=lambda: got.append(concurrent_rate(2, ("cpu", 7, 4, 1, {"amp": "off"}), 1)),
                              daemon=True)
    worker.start()
    worker.join(timeout=300)  # generous: two spawned processes import torch; waiting on them would take 600 s
    assert not worker.is_alive() and got == [None]
    line = capsys.readouterr().out.strip()
    assert line == ("2 trials at once: a worker failed: ValueError: CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, "
                    "110), got 7; the others were stopped")


def test_a_worker_killed_before_it_reports_is_seen_by_its_exit_code(monkeypatch):
    import queue

    from benchmarks import gpu

    monkeypatch.setattr(gpu, "POLL_S", 0.01)
    procs = [SimpleNamespace(exitcode=None), SimpleNamespace(exitcode=-9)]  # one at the barrier, one killed (OOM)
    assert gpu.collect(procs, queue.Queue(), 2) == "a worker died (exit code -9)"
