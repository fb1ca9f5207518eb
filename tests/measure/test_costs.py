"""Cost and robustness metrics (docs/design.md §7): measured numbers that could be wrong."""

import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lottery.config import MeasureConfig, RobustnessConfig
from lottery.measure import carbon, costs, robustness, similarity
from lottery.measure.corruptions import CORRUPTIONS, corrupt
from lottery.networks.cifar_resnet import build, remove_blocks
from tests.helpers import resnet_plan, train_config, write_released

CPU = torch.device("cpu")


def analytic_flops(plan) -> int:
    """2 x multiply-adds of every convolution and the classifier, counted by hand."""
    total, size = 2 * 3 * plan.stem_ch * 9 * 32 * 32, 32
    for b in plan.blocks:
        out = size // b.stride
        total += 2 * (b.in_ch * b.mid_ch * 9 + b.mid_ch * b.out_ch * 9) * out * out
        if not b.removable and plan.shortcut == "B":
            total += 2 * b.in_ch * b.out_ch * out * out
        size = out
    return total + 2 * plan.blocks[-1].out_ch * plan.num_classes


@pytest.mark.parametrize("depth,shortcut", [(32, "B"), (56, "B"), (20, "A")])
def test_flops_equal_the_hand_count(depth, shortcut):
    plan = resnet_plan(depth, shortcut)
    assert costs.flops(build(plan)) == analytic_flops(plan)


@pytest.mark.parametrize("depth,cut", [(32, 6.8), (56, 3.75)])
def test_one_block_cuts_the_papers_share_of_flops(depth, cut):
    model = build(resnet_plan(depth))
    dense = costs.flops(model)
    for block in (0, model.plan.removable[-1]):  # a stage-1 and a stage-3 block cost the same
        reduction = 100 * (1 - costs.flops(remove_blocks(model, [block])) / dense)
        assert reduction == pytest.approx(cut, abs=0.1)
    assert dense == pytest.approx({32: 138.2e6, 56: 251.0e6}[depth], rel=0.01)  # docs/design.md §10


def recipe(batch):
    return train_config(batch_size=batch)


def test_cpu_memory_grows_with_batch_and_drops_with_blocks():
    model = build(resnet_plan(20))
    small, method = costs.training_memory(model, recipe(8), CPU)
    large, _ = costs.training_memory(model, recipe(32), CPU)
    shallow, _ = costs.training_memory(remove_blocks(model, [0, 1]), recipe(32), CPU)
    assert method == "cpu_params_grads_optimizer_saved_tensors"
    assert large > small and shallow < large
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert small > 3 * weights  # weights, gradients and momentum, plus activations


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert similarity.linear_cka(x, x) == pytest.approx(1.0)
    assert similarity.linear_cka(x, x.double() @ q) == pytest.approx(1.0)
    assert similarity.linear_cka(x, 7.5 * x) == pytest.approx(1.0)
    assert similarity.linear_cka(x, torch.randn(200, 16, generator=g)) < 0.3


def test_throughput_and_latency_are_positive_and_leave_the_model_alone():
    model = build(resnet_plan(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert costs.throughput(model, recipe(8), CPU, steps=2, warmup=1) > 0
    assert costs.latency_ms(model, 1, CPU, repeats=3, t=recipe(8).train) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_released_cifar10c_and_cifar102_readers(tmp_path):
    root = write_released(tmp_path)
    sets = robustness.released_cifar10c(OmegaConf.structured(RobustnessConfig(
        cifar10c_root=str(root), corruptions=["gaussian_noise", "fog"], severities=[2, 5], images=8)), CPU)
    assert [(n, s, len(sp)) for n, s, sp in sets] == [("gaussian_noise", 2, 8), ("gaussian_noise", 5, 8),
                                                      ("fog", 2, 8), ("fog", 5, 8)]
    raw = np.load(root / "fog.npy")
    assert torch.equal(sets[3][2].x[0].permute(1, 2, 0), torch.from_numpy(raw[80]))  # severity 5 block
    np.savez(tmp_path / "cifar102_test.npz", images=raw[:12], labels=np.arange(12) % 10)
    cfg = OmegaConf.structured(RobustnessConfig(cifar10c_root=str(root), corruptions=["fog"], severities=[1],
                                                cifar102_path=str(tmp_path / "cifar102_test.npz")))
    shifted = robustness.load_shifted(cfg, None, str(tmp_path / "cache"), CPU)
    assert shifted.cifar10c_source == "released" and len(shifted.cifar102) == 12


def smooth_images(n=24):
    ys, xs = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing="ij")
    rng = np.random.default_rng(0)
    img = [np.stack([(a * ys + (1 - a) * xs) * 200 + 20 * b for b in (0.2, 0.5, 0.8)], -1)
           for a in rng.random(n)]
    return np.uint8(np.stack(img))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                                  "zoom_blur", "snow", "fog", "brightness", "contrast", "pixelate",
                                  "jpeg_compression", "motion_blur"])
def test_regenerated_corruptions_move_further_as_severity_rises(name):
    x = smooth_images()
    dist = [np.abs(corrupt(x, name, s, seed=0).astype(float) - x).mean() for s in (1, 3, 5)]
    assert 0 < dist[0] < dist[1] < dist[2], dist


@pytest.mark.parametrize("name", ["glass_blur", "elastic_transform"])
def test_non_monotone_corruptions_still_change_images_deterministically(name):
    x = smooth_images()
    a, b = corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=0)
    assert np.array_equal(a, b) and not np.array_equal(a, x) and a.dtype == np.uint8


def test_frost_cannot_be_regenerated_and_is_reported():
    assert CORRUPTIONS["frost"] is None


def test_codecarbon_failure_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = OmegaConf.structured(MeasureConfig(carbon_dir=str(blocker / "codecarbon")))
    with caplog.at_level(logging.WARNING, logger="lottery"):
        with carbon.tracked(cfg, "test") as fp:
            pass
    assert fp.co2_kg is None and fp.power == "unavailable"
    assert "codecarbon could not start" in caplog.text


def test_codecarbon_measures_a_phase_at_its_grids_carbon_intensity(tmp_path):
    cfg = OmegaConf.structured(MeasureConfig(carbon_dir=str(tmp_path / "cc")))
    phases = []
    for work in (200_000, 2_000_000):
        with carbon.tracked(cfg, "test") as fp:
            sum(i * i for i in range(work))
        phases.append(fp)
    short, long = phases
    assert 0 < short.energy_kwh < long.energy_kwh and short.power in ("measured", "estimated")
    intensity = short.co2_kg / short.energy_kwh  # kg CO2 per kWh of the configured country's grid
    assert long.co2_kg / long.energy_kwh == pytest.approx(intensity, rel=1e-6) and 0.01 < intensity < 2


def test_codecarbon_stops_when_the_tracked_phase_raises(tmp_path, monkeypatch):
    from codecarbon import OfflineEmissionsTracker

    stopped = []
    real_stop = OfflineEmissionsTracker.stop
    monkeypatch.setattr(OfflineEmissionsTracker, "stop", lambda self: stopped.append(1) or real_stop(self))
    cfg = OmegaConf.structured(MeasureConfig(carbon_dir=str(tmp_path / "cc")))
    with pytest.raises(KeyboardInterrupt):
        with carbon.tracked(cfg, "test"):
            raise KeyboardInterrupt
    assert stopped == [1]


def test_with_several_trials_at_once_codecarbon_follows_the_process(tmp_path, monkeypatch):
    from codecarbon import OfflineEmissionsTracker

    modes = []
    real_init = OfflineEmissionsTracker.__init__

    def init(self, *a, **kw):
        modes.append(kw.get("tracking_mode"))
        real_init(self, *a, **kw)

    monkeypatch.setattr(OfflineEmissionsTracker, "__init__", init)
    cfg = OmegaConf.structured(MeasureConfig(carbon_dir=str(tmp_path / "cc")))
    for jobs in (1, 2):
        with carbon.tracked(cfg, "test", jobs):
            pass
    assert modes == ["machine", "process"]


def test_graph_memory_is_its_pools_segments_less_the_cublas_workspaces(monkeypatch):
    """A captured step's memory, read from a faked allocator snapshot: the graph pool's segments,
    less the cuBLAS workspace the capture's stream put there (an allocated block of the workspace's
    size that holds no gradient); neither the warm-up stream's workspace (in the default pool) nor
    another graph's pool counts, where the reserved bytes around the capture held both workspaces."""
    mib, pool = 1 << 20, (0, 7)
    model, trained = build(resnet_plan(20)), []

    class Graph:
        def replay(self):
            pass

        def pool(self):
            return pool

    def capture(body, m, opt, device):
        body()  # the step's gradients, which a capture leaves in its pool
        trained.append(m)
        return Graph()

    def snapshot():
        grads = [p.grad for p in trained[0].parameters()]
        used = sum(g.nbytes for g in grads)
        blocks = [{"address": g.untyped_storage().data_ptr(), "size": g.nbytes, "requested_size": g.nbytes,
                   "state": "active_allocated"} for g in grads]
        blocks.append({"address": 1, "size": 20 * mib - used, "requested_size": 0, "state": "inactive"})
        workspace = [{"address": 2, "size": 32 * mib, "requested_size": 32 * mib, "state": "active_allocated"}]
        return [{"segment_pool_id": pool, "total_size": 20 * mib, "blocks": blocks},
                {"segment_pool_id": pool, "total_size": 32 * mib, "blocks": workspace},
                {"segment_pool_id": (0, 0), "total_size": 32 * mib, "blocks": workspace},  # the warm-up stream's
                {"segment_pool_id": (0, 9), "total_size": 8 * mib, "blocks": []}]  # another graph's

    fc_grad = model.fc.weight.nbytes  # a gradient of a workspace's size still counts
    reserved = iter([100 * mib, (100 + 20 + 32 + 32) * mib])
    monkeypatch.setattr(costs, "graphs_on", lambda device, t: True)
    monkeypatch.setattr(costs, "capture", capture)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", snapshot)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: next(reserved))
    monkeypatch.setattr(torch.backends.cuda, "cublas_workspace_size", lambda: 32 * mib)
    monkeypatch.setattr(torch.backends.cuda, "cublaslt_workspace_size", lambda: fc_grad)
    memory, method = costs.training_memory(model, recipe(8), CPU)
    weights = sum(p.nbytes for p in model.parameters())
    assert method == "cuda_graph_pool_plus_own_state" and memory == 2 * weights + 20 * mib  # weights, momentum


@pytest.mark.cuda
def test_graph_memory_is_the_eager_steps_without_cublas_workspaces():
    """On a GPU, a captured step holds what the eager step peaks at, within the pool's segment
    rounding: not the 32 MiB cuBLAS workspace of each new (handle, stream) pair."""
    device, model = torch.device("cuda"), build(resnet_plan(20)).cuda()
    eager, _ = costs.training_memory(model, train_config(batch_size=128), device)
    graph, method = costs.training_memory(model, train_config(batch_size=128, cuda_graph=True), device)
    assert method == "cuda_graph_pool_plus_own_state" and abs(graph - eager) < 16 << 20, (graph, eager)


@pytest.mark.cuda
def test_gpu_memory_ignores_tensors_resident_on_the_device():
    device = torch.device("cuda")
    model = build(resnet_plan(32)).to(device)
    t = recipe(128)
    alone, method = costs.training_memory(model, t, device)
    ballast = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB of resident data
    beside, _ = costs.training_memory(model, t, device)
    del ballast
    assert method == "cuda_step_peak_plus_own_state" and abs(beside - alone) < 0.01 * alone


def test_like_for_like_comparisons_say_why_they_are_absent():
    from lottery.measure.metrics import Phase, compare

    both = {"throughput_img_s": 300.0, "dense_throughput_img_s": 200.0, "flops": 90, "dense_flops": 100,
            "memory_bytes": 50, "dense_memory_bytes": 100, "train_seconds": 40.0, "dense_train_seconds": 100.0,
            "co2_kg": 0.4, "dense_co2_kg": 1.0, "energy_kwh": 0.8, "dense_energy_kwh": 2.0,
            "accuracy": 91.0, "dense_accuracy": 90.5}
    alone = "device=cpu:x threads=2 amp=bf16 channels_last=True compile=False jobs=1"
    d = Phase(100.0, 10, 1.0, 2.0, alone, False)
    t = Phase(40.0, 5, 0.4, 0.8, alone, False)
    m, tags = compare(both, t, d)
    assert m["speedup"] == pytest.approx(1.5)  # throughput ratio, not the wall times
    assert m["speedup_wall"] == pytest.approx(10.0 / 8.0)  # per epoch: 10 s vs 8 s
    assert m["co2_reduction_pct"] == pytest.approx(20.0)  # per epoch: 0.1 vs 0.08 kg
    assert m["energy_reduction_pct"] == pytest.approx(20.0) and m["flops_reduction_pct"] == pytest.approx(10.0)
    assert m["memory_reduction_pct"] == pytest.approx(50.0) and m["delta_pp"] == pytest.approx(0.5)
    assert not tags
    other = Phase(40.0, 5, 0.4, 0.8, alone.replace("threads=2", "threads=1"), True)
    m, tags = compare(both, other, d)
    assert "speedup_wall" not in m and "co2_reduction_pct" not in m and m["speedup"] == pytest.approx(1.5)
    assert "threads=1" in tags["speedup_wall_absent"] and "resumed" in tags["co2_reduction_absent"]
    crowded = alone.replace("jobs=1", "jobs=2")
    m, tags = compare(both, Phase(40.0, 5, 0.4, 0.8, crowded, False), Phase(100.0, 10, 1.0, 2.0, crowded, False))
    assert tags["speedup_wall_absent"] == "trained beside other trials"


def test_every_compared_metric_has_its_dense_counterpart_and_one_row():
    from lottery.measure.metrics import METRICS, STORED, dense_side

    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    side = dense_side({"flops": 3.0, "cifar10c_accuracy@k": 40.0, "cifar10c_accuracy@other": 1.0}, "@k")
    assert side["dense_flops"] == 3.0 and side["dense_cifar10c_accuracy"] == 40.0
    assert "dense_latency_ms_b128" not in side  # measured live, beside the ticket, in the trial's process
    assert set(side) == {f"dense_{m.name}" for m in METRICS if m.dense == STORED}


def test_a_speed_ratio_beyond_what_the_flops_allow_is_left_out_as_unreliable():
    from lottery.measure.metrics import Phase, compare

    phase = Phase(10.0, 4, None, None, "cpu jobs=1", False)
    base = {"flops": 100.0, "dense_flops": 107.0}  # one block of fifteen gone
    kept, tags = compare({**base, "throughput_img_s": 110.0, "dense_throughput_img_s": 100.0}, phase, phase)
    assert kept["speedup"] == pytest.approx(1.1) and not tags
    gone, tags = compare({**base, "throughput_img_s": 6330.0, "dense_throughput_img_s": 100.0}, phase, phase)
    assert "speedup" not in gone and "outside [0.67, 1.60]x" in tags["speedup_unreliable"]
    co2, tags = compare({**base, "co2_kg": 2.04, "dense_co2_kg": 1.0}, phase, phase)  # -104 %: a busy machine
    assert "co2_reduction_pct" not in co2 and "co2_reduction_unreliable" in tags


def test_a_ticket_measured_beside_its_dense_network_under_load_is_within_bounds_or_tagged(tmp_path):
    """Another process loads the CPU while the ticket's and the dense network's steps and
    forward passes are timed turn by turn: the speed-up either stays within what the FLOPs
    allow or is tagged unreliable, never logged as a finding."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from lottery.measure.metrics import Phase, compare
    from lottery.measure.trial_costs import device_costs

    dense = build(resnet_plan(20))
    ticket = remove_blocks(dense, [1])
    r = train_config(batch_size=16, amp="off")
    ctx = SimpleNamespace(device=CPU, cfg=OmegaConf.create({
        "measure": OmegaConf.structured(MeasureConfig(throughput_steps=6, warmup_steps=1, latency_repeats=6)),
        "train": r.train, "optim": r.optim, "schedule": r.schedule}))
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        measured, _ = device_costs(ctx, [ticket, dense])
    finally:
        load.kill()
        load.wait()
    assert measured["throughput_img_s_iqr"] >= 0 and measured["dense_latency_ms_b1_iqr"] >= 0
    phase = Phase(10.0, 4, None, None, "cpu jobs=1", False)
    metrics = {**measured, "flops": costs.flops(ticket), "dense_flops": costs.flops(dense)}
    kept, tags = compare(metrics, phase, phase)
    lo, hi = 1 / 1.5, metrics["dense_flops"] / metrics["flops"] * 1.5
    assert ("speedup" in kept and lo <= kept["speedup"] <= hi) or "speedup_unreliable" in tags
