"""``make gpu-check``'s plumbing on any machine: its plan, its budgets, what a check keeps when it
stops early, and the Table 2 projection's path (the GPU work itself is faked: figures are never
asserted here)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu import Timed
from benchmarks.gpu_check import MODES, STEPS, TOTAL_S, Check
from lottery.experiment import fast_path
from lottery.experiment.fast_path import FastPath, Settled
from tests.helpers import REPO


def test_gpu_check_on_a_machine_without_cuda_says_so_in_one_line_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make gpu-check runs the real checks")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--json", str(tmp_path / "g.json")], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0 and r.stdout.strip() == ("gpu-check: no CUDA device on this machine; run `make gpu-check` "
                                                      "on a GPU host (nothing checked here)")
    assert not (tmp_path / "g.json").exists()


def test_gpu_check_guards_each_check_and_keeps_within_its_budget(monkeypatch):
    monkeypatch.setattr(gpu_check, "STEPS", {
        "fine": Check(lambda a, o: o.update(img_s=1.0), ("img_s",), 5, "a check that works"),
        "broken": Check(lambda a, o: 1 / 0, ("x",), 5, "one that fails"),
        "hung": Check(lambda a, o: time.sleep(30), ("x",), 1, "one that runs past its budget"),
        "after": Check(lambda a, o: o.update(x="still measured"), ("x",), 5, "one after the failures"),
        "too_long": Check(lambda a, o: o.update(x="never run"), ("x",), 100, "one that no longer fits"),
    })
    monkeypatch.setattr(gpu_check, "TOTAL_S", 30)
    figures = gpu_check.run(None)
    assert figures["fine"] == {"img_s": 1.0} and figures["after"] == {"x": "still measured"}
    assert figures["broken"] == "failed: ZeroDivisionError: division by zero"
    assert figures["hung"] == "failed: stopped at its 1 s budget" and figures["hung_seconds"] < 5
    assert figures["too_long"].startswith("skipped: ") and "it needs 100" in figures["too_long"]
    assert figures["seconds"] < 10


def test_a_check_past_its_budget_keeps_the_modes_it_measured_before_it(monkeypatch):
    def rate(device, depth, batch, steps, variant, strict=False):
        if variant.get("compile"):
            time.sleep(30)  # a cold compile past the check's budget (stopped after 1 s)
        return 1234.5

    monkeypatch.setattr(gpu_check, "trainer_rate", rate)
    check = Check(lambda a, o: gpu_check.trainer_modes(4, o), tuple(MODES), 1, "the trainer's modes")
    monkeypatch.setattr(gpu_check, "STEPS", {"trainer_img_s": check})
    figures = gpu_check.run(None)
    assert figures["trainer_img_s"] == {"eager_fp32": 1234.5, "eager_bf16": 1234.5, "cuda_graph_fp32": 1234.5,
                                        "cuda_graph_bf16": 1234.5,
                                        "not_measured": "compiled_bf16: stopped at its 1 s budget"}


def test_a_check_that_fails_keeps_the_parts_it_measured_before_it():
    def fn(args, out):
        out["first"] = 1.0
        raise RuntimeError("CUDA error: an illegal memory access")

    got = gpu_check.measure(Check(fn, ("first", "second", "third"), 5, "two parts lost"), None)
    assert got == {"first": 1.0, "not_measured": "second, third: failed: RuntimeError: CUDA error: an illegal memory "
                                                 "access"}


def test_one_failed_trainer_mode_keeps_the_others(monkeypatch):
    def rate(device, depth, batch, steps, variant, strict=False):
        if variant.get("compile"):
            raise RuntimeError("fallback: OSError: no C compiler found for Triton")
        return 1234.5

    monkeypatch.setattr(gpu_check, "trainer_rate", rate)
    out = {}
    gpu_check.trainer_modes(4, out)
    assert out["compiled_bf16"] == "failed: RuntimeError: fallback: OSError: no C compiler found for Triton"
    assert out["eager_fp32"] == out["cuda_graph_bf16"] == 1234.5 and len(out) == len(MODES)


def test_compiles_run_last_and_every_budget_counts_its_compiles():
    compiling = [name for name, c in STEPS.items() if c.cold or c.cached]
    assert compiling == list(STEPS)[-len(compiling):]  # checks that compile after those that do not
    assert [m for m, v in MODES.items() if v.get("compile")] == list(MODES)[-1:]  # and the compiled mode last
    c = STEPS["paper_epoch_and_table2"]
    assert c.budget_s == c.work_s + 2 * gpu_check.COLD_COMPILE_S + gpu_check.CACHED_COMPILE_S
    assert c.compiles == (f"2 cold compiles x {gpu_check.COLD_COMPILE_S} s + 1 cached compile x "
                          f"{gpu_check.CACHED_COMPILE_S} s")
    assert sum(c.budget_s for c in STEPS.values()) <= TOTAL_S


def test_gpu_check_prints_its_plan_on_any_machine_and_runs_nothing(tmp_path):
    out = tmp_path / "g.json"
    r = subprocess.run(["make", "--no-print-directory", "gpu-check", "DRY_RUN=1", f"JSON={out}"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"gpu-check plan: {len(STEPS)} checks in at most {TOTAL_S} s" in r.stdout
    for name, check in STEPS.items():
        assert f"{name} " in r.stdout and f"<= {check.budget_s:>3} s  ({check.compiles})" in r.stdout
    assert "'not measured: <why>'" in r.stdout and "'failed: <why>'" in r.stdout and not out.exists()


def test_the_table2_projection_times_the_path_a_table2_trial_settles_on(monkeypatch):
    settled, trained = [], []

    def settle(cfg, device):
        settled.append(cfg)
        book = {"eager": {"compile_s": None}, "all": {"compile_s": 50.0}}  # the settle's entries: its cold compile
        Path(cfg.store.root, fast_path.FILE).write_text(json.dumps(book))
        return Settled(FastPath(channels_last=False, compile=True), "timed here", "compiled contiguous 9000 img/s")

    def run(device, depth, batch, steps, variant):
        trained.append((depth, batch, steps, variant))
        return Timed(10_000.0, 0.0, 1.0, "stayed", overhead_s=12.0)

    monkeypatch.setattr(gpu_check.fast_path, "settle", settle)
    monkeypatch.setattr(gpu_check, "trainer_run", run)
    out = {}
    gpu_check.table2_projection(out)
    cfg = settled[0]  # a Table 2 trial at the paper profile: the compiled paths are open to it
    assert cfg.train.epochs == 200 and cfg.model.depth == 32 and cfg.mode.name == "init"
    assert FastPath(False, True) in fast_path.candidates(cfg)
    assert trained == [(32, 128, 50_000 // 128, {"amp": "auto", "deterministic": True, "channels_last": False,
                                                 "compile": True})]  # one paper epoch on the settled path
    assert out["fast_path"].startswith("compiled contiguous (timed here") and out["cold_compile_seconds"] == 50.0
    assert out["epoch_seconds"] == 5.0 and out["first_epoch_overhead_seconds"] == 12.0
    # the settle, the dense network's overhead and a cold compile per ticket (10 cells), beside 11 trainings of
    # 200 epochs of 5 s, the tickets' at their FLOPs' share (0 < share < 1 each)
    extra = (out["settle_seconds"] + 12.0 + 10 * 50.0) / 60
    assert 200 * 5 / 60 < out["table2_gpu_minutes"] - extra < 11 * 200 * 5 / 60
    assert "the settle once" in out["counted"] and "a cold compile" in out["counted"]
