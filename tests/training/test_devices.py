"""The CUDA path's logic, tested on a CPU wherever it can be (faked allocator and device counts,
dispatch-level counts of host syncs, dynamo's graph counts with the eager backend), and the GPU
tests proper (``cuda`` mark: make gpu-check runs them)."""

import copy
import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from lottery import networks
from lottery.config import MeasureConfig
from lottery.errors import LotteryError
from lottery.experiment import sweeps
from lottery.measure import carbon, costs
from lottery.networks.cifar_resnet import build
from lottery.pruning.criteria import CRITERIA
from lottery.training import devices, trainer
from lottery.training.data import load_dataset
from lottery.training.sources.base import SOURCES
from lottery.training.optimizers import make_optimizer
from lottery.training.trainer import Job, train
from tests.helpers import kind_config, resnet_plan, train_config

CPU = torch.device("cpu")


def data(n=70):
    return load_dataset(OmegaConf.structured(kind_config(SOURCES, "synthetic", train_size=n, test_size=20)), CPU)


def recipe(**kw):
    return train_config(epochs=2, milestones=[1], batch_size=32, progress=False, **kw)


class Counting(TorchDispatchMode):
    """Counts one aten op: ``_local_scalar_dense`` is what every ``.item()`` (a host sync) runs."""

    def __init__(self, op):
        super().__init__()
        self.op, self.calls = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is self.op
        return func(*args, **(kwargs or {}))


def test_an_epoch_reads_the_device_once_however_many_steps_it_takes():
    torch.manual_seed(0)
    model, ds = build(resnet_plan(8)), data(160)  # 5 steps an epoch
    with Counting(torch.ops.aten._local_scalar_dense.default) as mode:
        train(model, ds, Job(recipe(), 0, CPU))
    assert mode.calls == 2 * 2  # loss and accuracy, once at the end of each of the 2 epochs


def test_compile_captures_one_graph_per_architecture_without_recompiling():
    """Static shapes: the epoch's last partial batch (70 = 2 x 32 + 6) runs eagerly, so no second
    shape recompiles; a second architecture (a ticket) starts from reset caches."""
    ds, t = data(70), recipe(compile=True, compile_backend="eager")
    torch.manual_seed(0)
    dense = build(resnet_plan(8))
    done = train(dense, ds, Job(t, 0, CPU))
    assert done.compiled == "stayed" and [h["epoch"] for h in done.history] == [1, 2]
    ticket = networks.without(dense, ["blocks.0"])
    assert train(ticket, ds, Job(t, 0, CPU)).compiled == "stayed"
    eager = build(resnet_plan(8))
    assert train(eager, ds, Job(recipe(), 0, CPU)).compiled == "no"


def test_compiling_never_changes_what_is_trained_only_a_captured_graph_drops_the_partial_batch():
    """Compile is how a step runs (not part of a trial's identity): a compiled recipe trains every
    batch an eager one does, its partial batch eagerly, to the same weights (dynamo with the eager
    backend runs the same kernels); only a captured CUDA graph drops the partial batch."""
    from lottery.training.batches import epoch_plan, num_batches

    ds = data(70)
    assert [len(i) for i, _, _ in epoch_plan(ds, recipe().train, 0, 0)] == [32, 32, 6]
    assert [len(i) for i, _, _ in epoch_plan(ds, recipe(compile=True).train, 0, 0)] == [32, 32, 6]
    assert num_batches(70, recipe(compile=True).train) == 3 and num_batches(70, recipe(cuda_graph=True).train) == 2
    weights = []
    for t in (recipe(amp="off"), recipe(amp="off", compile=True, compile_backend="eager")):
        torch.manual_seed(0)
        model = build(resnet_plan(8))
        done = train(model, ds, Job(t, 0, CPU))
        weights.append(model.state_dict())
    assert done.compiled == "stayed"
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_training_refuses_a_path_left_unsettled():
    with pytest.raises(ValueError, match="settled"):
        train(build(resnet_plan(8)), data(70), Job(train_config(epochs=1, milestones=[], compile=None), 0, CPU))


def test_kept_rewind_points_are_written_once_and_the_state_at_most_every_save_every_s(tmp_path, monkeypatch):
    import lottery.training.checkpoints as T

    written = []
    real = T.save_atomic
    monkeypatch.setattr(T, "save_atomic", lambda obj, path: written.append(path.name) or real(obj, path))
    torch.manual_seed(0)
    t = train_config(epochs=4, milestones=[2], batch_size=32, progress=False, save_every_s=3600)
    done = train(build(resnet_plan(8)), data(64), Job(t, 0, CPU, keep=frozenset({0, 2}), state_path=tmp_path / "s.pt"))
    # each kept point once; the state once, at the end (an hour between saves)
    assert sorted(written) == ["s.optim_0.pt", "s.optim_2.pt", "s.pt", "s.theta_0.pt", "s.theta_2.pt"]
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["kept"] == [0, 2] and "checkpoints" not in state and sorted(done.checkpoints) == [0, 2]


def test_a_resumed_training_reads_its_kept_points_back(tmp_path):
    torch.manual_seed(0)
    t = train_config(epochs=3, milestones=[2], batch_size=32, progress=False, save_every_s=0)
    model, ds = build(resnet_plan(8)), data(64)
    first = train(copy.deepcopy(model), ds, Job(t, 0, CPU, keep=frozenset({1}), state_path=tmp_path / "s.pt", stop=2))
    again = train(copy.deepcopy(model), ds, Job(t, 0, CPU, keep=frozenset({1}), state_path=tmp_path / "s.pt"))
    assert again.resumed_from == 2 and all(torch.equal(first.checkpoints[1][k], again.checkpoints[1][k])
                                           for k in first.checkpoints[1])


def test_trial_k_of_a_multirun_goes_to_gpu_k_mod_the_devices_and_cuda_n_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(devices.pick_device("auto", job)) for job in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert str(devices.pick_device("cuda:1", 5)) == "cuda:1"  # an explicit device stays
    devices.check_device("cuda:1")
    with pytest.raises(LotteryError, match=r"device=cuda:2: this machine has 2 CUDA device\(s\): cuda:0 .. cuda:1"):
        devices.check_device("cuda:2")
    with pytest.raises(LotteryError, match="use auto, cpu or cuda"):
        devices.check_device("cuda:x")


def test_codecarbon_reads_the_trials_own_gpu_by_its_nvml_index(tmp_path, monkeypatch):
    """codecarbon takes NVML's (physical) indices; torch's cuda:1 under CUDA_VISIBLE_DEVICES=3,5
    is NVML's 5: found through the device's UUID, which both know, else the visible list."""
    import pynvml
    from codecarbon import OfflineEmissionsTracker

    seen = []
    real = OfflineEmissionsTracker.__init__
    monkeypatch.setattr(OfflineEmissionsTracker, "__init__", lambda self, *a, **kw: seen.append(kw) or real(
        self, *a, **{k: v for k, v in kw.items() if k != "gpu_ids"}))
    uuids = {0: "3c2b1a00-0000-4000-8000-000000000003", 1: "8f0a6c7e-1d2b-4c3d-9e8f-0a1b2c3d4e5f"}
    nvml = {"GPU-3c2b1a00-0000-4000-8000-000000000003": 3, "GPU-8f0a6c7e-1d2b-4c3d-9e8f-0a1b2c3d4e5f": 6}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: type("Props", (), {"uuid": uuids[index]}))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name, fn in {"nvmlInit": lambda: None, "nvmlShutdown": lambda: None, "nvmlDeviceGetIndex": nvml.__getitem__,
                     "nvmlDeviceGetHandleByUUID": lambda uuid: uuid, "nvmlDeviceIsMigDeviceHandle": lambda h: False
                     }.items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    cfg = OmegaConf.structured(MeasureConfig(carbon_dir=str(tmp_path / "cc")))

    def ids(device):
        with carbon.tracked(cfg, "test", 1, device):
            pass
        return seen[-1].get("gpu_ids")

    assert ids(torch.device("cuda:1")) == [6] and ids(torch.device("cuda")) == [3] and ids(CPU) is None  # by UUID

    slice_uuid = "a1b2c3d4-0000-4000-8000-00000000000a"  # cuda:1 a MIG slice of NVML's GPU 6

    def by_uuid(name):  # NVML knows a slice as MIG-<uuid>, not GPU-<uuid>
        if name == f"MIG-{slice_uuid}":
            return "slice"
        if name in nvml:
            return name
        raise pynvml.NVMLError_NotFound()

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", by_uuid)
    monkeypatch.setattr(pynvml, "nvmlDeviceIsMigDeviceHandle", lambda handle: handle == "slice")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
                        lambda handle: "GPU-8f0a6c7e-1d2b-4c3d-9e8f-0a1b2c3d4e5f")
    uuids[1] = slice_uuid
    assert ids(torch.device("cuda:1")) == [6]

    def no_nvml():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    assert ids(torch.device("cuda:1")) == [5] and ids(torch.device("cuda:0")) == [3]  # the visible list
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert ids(torch.device("cuda:1")) == [1]  # every GPU visible: torch's index


def test_the_cuda_step_memory_counts_the_step_above_what_was_resident(monkeypatch):
    """Faked allocator statistics: whatever sits on the device before the step (data, ballast,
    other networks) cancels out; the network's own state is counted exactly."""
    model = build(resnet_plan(8))
    t = recipe(amp="off")
    opt = make_optimizer(model, t)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    def measured(resident):
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: resident + 1000)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: resident + 5000)
        return costs._cuda_step_memory(model, opt, x, y, CPU, t.train)

    alone, beside = measured(0), measured(1 << 30)  # 1 GiB of resident ballast
    own = costs._own_bytes(model, opt)  # weights and, after a step, momentum
    assert alone == beside == own + 4000 and own == 2 * sum(p.numel() * 4 for p in model.parameters())


def test_scoring_never_uses_tf32(monkeypatch):
    from lottery.pruning import criteria

    seen = []
    monkeypatch.setitem(criteria.CRITERIA._items, "probe", criteria.Criterion(
        "probe", lambda *a: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        or torch.zeros(4, dtype=torch.float64), None, False, ""))

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # what a GPU host may set
    try:
        criteria.score_blocks("probe", build(resnet_plan(14)), None, kind_config(CRITERIA, "probe"), 0)
        assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32  # restored after scoring
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_determinism_is_configured_by_the_recipe_and_recorded():
    with devices.restored():
        devices.configure(CPU, recipe(deterministic=False).train)
        assert not torch.are_deterministic_algorithms_enabled() and devices.determinism(CPU) == "off"
        devices.configure(CPU, recipe().train)
        train(build(resnet_plan(8)), data(32), Job(recipe(deterministic=False), 0, CPU))  # training leaves it alone
        assert torch.are_deterministic_algorithms_enabled() and devices.determinism(CPU) == "strict"
        assert "deterministic=True" in devices.conditions(CPU, recipe().train, 1)


def test_deterministic_training_does_not_pay_for_filling_fresh_memory_and_computes_the_same_without_it():
    """Deterministic algorithms fill fresh tensors with NaN unless told not to (13 % of a bf16
    ResNet32 step on a CPU). A training with the fill (where any read of unwritten memory turns
    the weights NaN) and one without it agree to the bit: no op of a step reads what it did not
    write, so the fill buys nothing here."""
    fill = torch.utils.deterministic
    with devices.restored():
        torch.use_deterministic_algorithms(False)  # torch's defaults (a trial earlier in the process changed them)
        fill.fill_uninitialized_memory = True
        with devices.restored():
            devices.configure(CPU, recipe().train)
            assert torch.are_deterministic_algorithms_enabled() and not fill.fill_uninitialized_memory
            weights = []
            for filled in (True, False):
                fill.fill_uninitialized_memory = filled
                torch.manual_seed(0)
                model = build(resnet_plan(8))
                train(model, data(64), Job(recipe(amp="bf16"), 0, CPU))
                weights.append([p.detach().clone() for p in model.parameters()])
        assert fill.fill_uninitialized_memory  # put back after the block
        with pytest.raises(RuntimeError), devices.restored():
            devices.configure(CPU, recipe().train)
            raise RuntimeError("a trial fails")
        assert fill.fill_uninitialized_memory and not torch.are_deterministic_algorithms_enabled()  # and after one
    assert all(w.isfinite().all() for w in weights[0])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_auto_on_a_cpu_for_a_long_profile_says_so_and_how_long(caplog, monkeypatch):
    from lottery.experiment import estimate, trial
    from lottery.experiment.design import Design
    from tests.helpers import compose_cfg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(estimate, "timed_speed", lambda cfg: estimate.Speed(1e12, None, "faked"))
    cfg = compose_cfg("data=synthetic", "model.depth=8", "device=auto", "tracking.uri=sqlite:///:memory:")
    design = Design(cfg, None, None, CPU, {}, 0, 0, 1)
    with caplog.at_level(logging.WARNING, logger="lottery"):
        trial.warn_if_slow(design)
    assert "device=auto found no GPU: training on the CPU, where one dense network of this profile (200 epochs) " \
           "takes about" in caplog.text


def test_the_survey_resolves_precision_for_the_workers_device():
    class Args:
        worker_precision, launcher = None, "slurm"

    cfg = OmegaConf.create({"train": {"amp": "auto"}, "device": "auto"})
    assert sweeps.worker_precision(Args, cfg) == "bf16"
    Args.worker_precision = "fp32"
    assert sweeps.worker_precision(Args, cfg) == "fp32"


def test_the_grid_dense_networks_train_before_their_tickets():
    sweep = sweeps.load("table4")
    tickets = sweeps.commands(sweep, sweeps.Setting("smoke", extra=("tracking.parent=p",)), 2, jobs=2)
    dense = sweeps.dense_first(tickets)
    launcher = sweeps.launcher_overrides(2, None)
    assert [c[4:] for c in dense] == [
        [f"model={m}", "profile=smoke", "seed=0,1", "tracking.experiment=table4", *launcher, "data=synthetic",
         "tracking.parent=p", "mode=dense"] for m in ("resnet32", "resnet56")]
    assert all("criterion" not in " ".join(c) and "density" not in " ".join(c) for c in dense)


# ---------------------------------------------------------------------------------------------
# On a GPU (make gpu-check)


@pytest.mark.cuda
def test_a_captured_cuda_graph_step_trains_like_the_eager_step():
    device = torch.device("cuda")
    ds = load_dataset(OmegaConf.structured(kind_config(SOURCES, "synthetic", train_size=256, test_size=20)), device)
    out = []
    for captured in (False, True):  # the same branch (fused SGD, a tensor lr, static buffers), eager or replayed
        torch.manual_seed(0)
        model = build(resnet_plan(8)).to(device)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trainer, "graphs_on", lambda device, t: captured)
            done = train(model, ds, Job(recipe(cuda_graph=True, amp="off"), 0, device))
        out.append((model.state_dict(), done.compiled))
    assert out[1][1] == "graph"
    for k in out[0][0]:
        torch.testing.assert_close(out[0][0][k].float(), out[1][0][k].float(), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_two_same_seed_trainings_on_a_gpu_are_bit_identical_when_deterministic():
    device = torch.device("cuda")
    ds = load_dataset(OmegaConf.structured(kind_config(SOURCES, "synthetic", train_size=256, test_size=20)), device)
    states = []
    with devices.restored():
        devices.configure(device, recipe().train)  # as a trial opens
        for filled in (True, False):  # with NaN in fresh memory, and without
            torch.utils.deterministic.fill_uninitialized_memory = filled
            torch.manual_seed(0)
            model = build(resnet_plan(14)).to(device).to(memory_format=torch.channels_last)
            train(model, ds, Job(recipe(), 0, device))
            states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
