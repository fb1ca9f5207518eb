"""The CUDA path run on a CPU: the branches a GPU takes that torch can run here (the fused SGD with
its learning rate a device tensor, the captured step's body, the fallbacks), the calls a GPU
gets checked with faked ``torch.cuda`` answers, and device placement checked with fake tensors
on ``cuda:1`` (a CPU tensor in a CUDA op, or a host sync, fails here as it would there)."""

import dataclasses
import logging
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode

from lottery import networks
from lottery.errors import first_cause
from lottery.measure import costs
from lottery.networks.cifar_resnet import build
from lottery.pruning.criteria import CRITERIA, ScoringSet
from lottery.training import capture, devices, optimizers, trainer
from lottery.training.checkpoints import cpu_tree
from lottery.training.batches import batch, epoch_plan, scoring_set
from lottery.training.data import Split, load_dataset
from lottery.training.sources.base import SOURCES
from lottery.training.optimizers import current_lr, load_optimizer, make_optimizer
from lottery.training.schedules import lr_at
from lottery.training.trainer import Job, train
from tests.helpers import FAKE_CUDA, fake_cuda, kind_config, on_fake_cuda, resnet_plan, train_config

CPU = torch.device("cpu")


def data(n=64):
    return load_dataset(OmegaConf.structured(kind_config(SOURCES, "synthetic", train_size=n, test_size=20)), CPU)


def recipe(**kw):
    step = {"milestones": [2]} if kw.get("schedule", "step") == "step" else {}
    return train_config(**{"epochs": 3, **step, "batch_size": 32, "progress": False, "amp": "off", "save_every_s": 0,
                           **kw})


@pytest.fixture
def globals_restored():
    """Whatever a test sets for the process (determinism, attention backends, cuDNN) put back after it."""
    with devices.restored():
        yield


# ---------------------------------------------------------------------------------------------
# 1. The learning rate a captured step reads survives every optimizer reload


def test_a_cuda_graph_recipe_takes_the_fused_sgd_with_a_tensor_lr_on_the_cpu_too():
    opt = make_optimizer(build(resnet_plan(8)), recipe(cuda_graph=True), CPU)
    lr = opt.param_groups[0]["lr"]
    assert opt.defaults["fused"] and torch.is_tensor(lr) and lr.device == CPU and lr.item() == pytest.approx(0.1)
    eager = make_optimizer(build(resnet_plan(8)), recipe(), CPU)
    assert not eager.defaults["fused"] and isinstance(eager.param_groups[0]["lr"], float)


def test_a_reloaded_optimizer_keeps_its_own_lr_tensor_and_flags_with_the_saved_value():
    model = build(resnet_plan(8))
    saved_from = make_optimizer(model, recipe(), CPU)  # an eager run: a float lr, foreach
    optimizers.set_lr(saved_from, 0.0125)
    state = cpu_tree(saved_from.state_dict())
    opt = make_optimizer(model, recipe(cuda_graph=True), CPU)
    lr = opt.param_groups[0]["lr"]
    load_optimizer(opt, state)
    group = opt.param_groups[0]
    assert group["lr"] is lr and lr.item() == pytest.approx(0.0125)  # the tensor a graph reads, refilled
    assert group["fused"] and not group["foreach"]  # this optimizer's flags, not the saved run's
    tensor_state = cpu_tree(opt.state_dict())  # and the other way: a tensor lr saved, a float one loaded
    eager = make_optimizer(model, recipe(), CPU)
    load_optimizer(eager, tensor_state)
    assert eager.param_groups[0]["lr"] == pytest.approx(0.0125) and isinstance(eager.param_groups[0]["lr"], float)


def test_a_reloaded_adamw_step_count_lands_on_the_device_a_fused_step_reads_it_on():
    """An AdamW state saved by an unfused run (its step counts on the host) loaded into the fused
    optimizer of a GPU network (a rewound ticket, a resume on CUDA): torch casts the step counts by
    the saved run's flags and leaves them on the host, where the fused kernel refuses them."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # the saved state comes from the host
    model = on_fake_cuda(mode, build(resnet_plan(8)))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt.param_groups[0]["fused"] = True  # (torch checks a fused optimizer's device when built: a fake one cannot be)
    saved = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(()), "exp_avg_sq": torch.zeros(())}},
             "param_groups": [{**opt.state_dict()["param_groups"][0], "fused": None}]}
    with mode:
        load_optimizer(opt, saved)
    step = opt.state[opt.param_groups[0]["params"][0]]["step"]
    assert step.device == FAKE_CUDA and step.dtype == torch.float32


def test_a_reloaded_lr_stays_on_the_training_device():
    """A state saved on the host (``cpu_tree``) loaded into an optimizer of a ``cuda:1`` network:
    its learning rate is still the ``cuda:1`` tensor (torch's own load puts the CPU one there)."""
    mode = FakeTensorMode()
    model = on_fake_cuda(mode, build(resnet_plan(8)))
    with mode:
        lr = torch.tensor(0.1, device=FAKE_CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.param_groups[0]["lr"] = lr  # (SGD reads a tensor lr on the host when built: a fake one cannot be)
    state = {"state": {}, "param_groups": [{**opt.state_dict()["param_groups"][0], "lr": torch.tensor(0.05)}]}
    load_optimizer(opt, state)
    assert opt.param_groups[0]["lr"] is lr and lr.device == FAKE_CUDA


@pytest.mark.parametrize("kinds", [{}, {"optim": "adamw", "schedule": "cosine", "lr": 1e-3}], ids=["sgd", "adamw"])
def test_a_cuda_graph_training_killed_before_a_milestone_resumes_like_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                           kinds):
    """The branch a GPU takes (a fused SGD or AdamW, a tensor lr, static buffers): stopped after
    epoch 1 of 3, resumed from its saved state, it ends on the uninterrupted run's weights (AdamW:
    its moments and step count restored) with the last step's learning rate in the very tensor it
    started with (SGD: the milestone's at 2; AdamW: the cosine's last step)."""
    made = []
    real = trainer.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    ds, t = data(), recipe(cuda_graph=True, **kinds)

    def run(stop=None, state=None):
        torch.manual_seed(0)
        model = build(resnet_plan(8))
        done = train(model, ds, Job(t, 0, CPU, stop=stop, state_path=state))
        return model, done

    whole, whole_done = run()
    run(stop=1, state=tmp_path / "state.pt")  # "killed" after its first epoch's state was written
    assert torch.load(tmp_path / "state.pt", weights_only=True)["epoch"] == 1
    resumed, done = run(state=tmp_path / "state.pt")
    assert done.resumed_from == 1 and whole_done.compiled == done.compiled == "fallback: no CUDA device to capture on"
    opt = made[-1]
    lr = opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and opt.param_groups[0]["fused"] and type(opt).__name__ == {"adamw": "AdamW"}.get(
        kinds.get("optim"), "SGD")
    steps = len(ds.train) // 32
    assert current_lr(opt) == pytest.approx(lr_at(t, 2, steps - 1, steps)) == current_lr(made[0])
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------
# 2. The capture on the trial's own GPU, 4. each fast path's fallback


class FakeCuda:
    """``torch.cuda``'s stream, device and graph calls recorded (and run on the CPU): which device
    each stream belongs to and which stream the graph is captured on."""

    def __init__(self, monkeypatch):
        self.calls = []
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.device = torch.device(device) if device is not None else None
                fake.calls.append(("stream", self.device))

            def wait_stream(self, other):
                pass

        class Graph:
            replays = 0

            def replay(self):
                Graph.replays += 1

        def context(name):
            def enter(arg=None, **kw):
                fake.calls.append((name, arg if arg is not None else kw.get("stream")))
                return _Null()
            return enter

        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
        monkeypatch.setattr(torch.cuda, "stream", context("use_stream"))
        monkeypatch.setattr(torch.cuda, "device", context("device"))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", lambda graph, stream=None, **kw: fake.calls.append(
            ("graph", stream.device if stream is not None else None)) or _Null())
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: fake.calls.append(("set_device", device)))
        monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: fake.calls.append(("set_stream", stream.device)))


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stepping:
    """A ResNet-8, its fused SGD and a fixed batch; ``body`` is one training step, counted, and
    ``fail_at`` makes that run raise (as a capture can)."""

    def __init__(self, fail_at: int | None = None):
        torch.manual_seed(0)
        self.model = build(resnet_plan(8))
        self.before = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt = make_optimizer(self.model, recipe(cuda_graph=True), CPU)
        self.x, self.y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        self.runs, self.fail_at = 0, fail_at

    def body(self):
        self.runs += 1
        if self.runs == self.fail_at:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.opt.zero_grad()
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()


def test_the_step_is_captured_on_a_stream_of_the_trials_own_gpu_and_the_warmup_undone(monkeypatch):
    fake, cuda1, s = FakeCuda(monkeypatch), torch.device("cuda:1"), Stepping()
    capture.capture(s.body, s.model, s.opt, cuda1)
    assert ("device", cuda1) in fake.calls and ("graph", cuda1) in fake.calls  # the graph's stream is cuda:1's
    assert {d for name, d in fake.calls if name == "stream"} == {cuda1}  # no stream of another GPU
    assert s.runs == 4  # three warm-up steps, then the captured one (run eagerly by the fake)
    alone = Stepping()  # one step from the start, nothing before it: the warm-up was undone
    alone.body()
    assert all(torch.equal(v, s.model.state_dict()[k]) for k, v in alone.model.state_dict().items())


def test_a_capture_that_fails_puts_the_state_and_the_stream_back(monkeypatch):
    fake, s = FakeCuda(monkeypatch), Stepping(fail_at=4)  # the captured run fails
    with pytest.raises(RuntimeError, match="stream is capturing"):
        capture.capture(s.body, s.model, s.opt, torch.device("cuda:1"))
    assert fake.calls[-1] == ("set_stream", torch.device("cuda:1"))
    assert all(torch.equal(v, s.model.state_dict()[k]) for k, v in s.before.items())
    assert all(not st["momentum_buffer"].any() for st in s.opt.state.values())  # the next update is SGD's first


def test_configure_makes_the_trials_gpu_current_and_attention_deterministic(monkeypatch, globals_restored):
    fake = FakeCuda(monkeypatch)
    cuda1 = torch.device("cuda:1")
    devices.configure(cuda1, recipe().train)
    assert ("set_device", cuda1) in fake.calls
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert not (torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled())
    assert devices.determinism(cuda1) == "strict, attention: math" and devices.determinism(CPU) == "strict"
    devices.configure(cuda1, recipe(deterministic=False).train)
    assert devices.determinism(cuda1) == "off" and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cudnn.benchmark
    fake.calls.clear()
    devices.configure(torch.device("cuda"), recipe().train)  # device=cuda: the current GPU, nothing to switch
    assert not [c for c in fake.calls if c[0] == "set_device"]


def test_an_op_without_a_deterministic_implementation_stops_and_is_one_line(globals_restored):
    devices.configure(CPU, recipe().train)  # strict: warn-only would let it run while the run says deterministic
    with pytest.raises(RuntimeError) as raised:
        torch.nn.functional.max_unpool1d(torch.rand(1, 1, 2), torch.tensor([[[0, 1]]]), 2)
    line = devices.not_deterministic(raised.value, CPU)
    assert str(line) == ("train.deterministic=true but max_unpooling2d_forward_out has no deterministic "
                         "implementation on cpu: set train.deterministic=false (runs may then differ in their last "
                         "bits)")
    assert devices.not_deterministic(RuntimeError("out of memory"), CPU) is None


def _trained(ds, t, monkeypatch=None, failing_capture=False):
    if failing_capture:
        monkeypatch.setattr(trainer, "graphs_on", lambda device, t: True)
        monkeypatch.setattr(trainer, "capture", lambda *a: (_ for _ in ()).throw(RuntimeError(
            "CUDA error: operation not permitted when stream is capturing\nmore detail")))
    torch.manual_seed(0)
    model = build(resnet_plan(8))
    return model, train(model, ds, Job(t, 0, CPU, desc="ticket"))


def test_a_capture_that_fails_says_so_once_and_trains_eagerly(monkeypatch, caplog):
    ds, t = data(), recipe(cuda_graph=True, epochs=2)
    eager, _ = _trained(ds, t)
    with caplog.at_level(logging.WARNING, logger="lottery"):
        model, done = _trained(ds, t, monkeypatch, failing_capture=True)
    assert done.compiled == "fallback: RuntimeError: CUDA error: operation not permitted when stream is capturing"
    warned = [r.getMessage() for r in caplog.records if "failed on this host" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("ticket: capturing the step as a CUDA graph failed")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in eager.state_dict().items())


def test_the_step_is_captured_in_training_mode_from_a_network_that_arrives_in_eval_mode(monkeypatch):
    """A capture records the step as the network runs it then: in eval mode, every replay would be
    an eval-mode step (BatchNorm on running statistics, no dropout) for the whole training."""
    modes = []
    monkeypatch.setattr(trainer, "graphs_on", lambda device, t: True)
    monkeypatch.setattr(trainer, "capture", lambda body, model, opt, device: modes.append(model.training)
                        or Replayed(body))
    torch.manual_seed(0)
    model = build(resnet_plan(8)).eval()
    done = train(model, data(), Job(recipe(cuda_graph=True, epochs=1), 0, CPU))
    assert modes == [True] and done.compiled == "graph"


def test_a_fallback_names_the_first_cause_and_survives_a_cycle():
    inner = OSError("no C compiler found for Triton")
    try:
        try:
            raise inner
        except OSError:
            raise RuntimeError("capture_end failed\nmore")  # noqa: B904 - raised while handling: __context__
    except RuntimeError as outer:
        assert first_cause(outer) is inner
    looped = RuntimeError("wraps itself")
    looped.__cause__ = looped
    assert first_cause(looped) is looped


def test_a_compile_that_fails_says_so_once_and_trains_the_eager_network(failing_backend, caplog):
    ds = data()
    eager, _ = _trained(ds, recipe(epochs=2))
    with caplog.at_level(logging.WARNING, logger="lottery"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = build(resnet_plan(8))
        t = recipe(epochs=2, compile=True, compile_backend=failing_backend)
        done = train(model, ds, Job(t, 0, CPU, desc="dense"))
    assert done.compiled == "fallback: OSError: no C compiler found for Triton"
    warned = [r.getMessage() for r in caplog.records if "failed on this host" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("dense: torch.compile failed on this host")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in eager.state_dict().items())


# ---------------------------------------------------------------------------------------------
# 9. The costs of a captured recipe are the captured step's


class Replayed:
    """A capture stand-in: replays run the body eagerly, counted."""

    def __init__(self, body):
        self.body, self.replays = body, 0

    def replay(self):
        self.replays += 1
        self.body()

    def pool(self):
        return (0, 1)


def test_a_cuda_graph_recipe_times_and_measures_its_captured_step(monkeypatch):
    graphs = []
    monkeypatch.setattr(costs, "graphs_on", lambda device, t: True)
    monkeypatch.setattr(costs, "capture", lambda body, m, opt, device: graphs.append(Replayed(body)) or graphs[-1])
    t = recipe(cuda_graph=True, batch_size=4)
    nets = [build(resnet_plan(8)), build(resnet_plan(14))]
    rates = costs.throughputs(nets, t, CPU, steps=3, warmup=1)
    assert [len(r) for r in rates] == [3, 3] and [g.replays for g in graphs] == [1 + 1 + 3] * 2  # first, warm-up, timed

    pools = [{"segment_pool_id": (0, 1), "total_size": 123_456, "blocks": []},  # the graph's pool
             {"segment_pool_id": (0, 0), "total_size": 7_000, "blocks": []}]  # the default pool: not the step's
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: pools)
    for size in ("cublas_workspace_size", "cublaslt_workspace_size"):
        monkeypatch.setattr(torch.backends.cuda, size, lambda: 32 << 20)
    memory, method = costs.training_memory(nets[0], t, CPU)
    assert method == "cuda_graph_pool_plus_own_state"
    own = 2 * sum(p.numel() * 4 for p in nets[0].parameters())  # weights and momentum
    assert memory == own + 123_456


def test_costs_measure_the_eager_step_where_the_fast_path_fails_as_training_did(monkeypatch, failing_backend,
                                                                                  caplog):
    nets = [build(resnet_plan(8))]
    with caplog.at_level(logging.WARNING, logger="lottery"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rates = costs.throughputs(nets, recipe(compile=True, compile_backend=failing_backend, batch_size=4), CPU, 2, 1)
        monkeypatch.setattr(costs, "graphs_on", lambda device, t: True)
        monkeypatch.setattr(costs, "capture", lambda *a: (_ for _ in ()).throw(RuntimeError("capture failed")))
        graph = recipe(cuda_graph=True, batch_size=4)
        rates += costs.throughputs(nets, graph, CPU, 2, 1)
        memory, method = costs.training_memory(nets[0], graph, CPU)
        torch._dynamo.reset()
        both = recipe(cuda_graph=True, compile=True, compile_backend="eager", batch_size=4)
        rates += costs.throughputs(nets, both, CPU, 2, 1)  # compiled, its capture failing: the compiled step
    assert [len(r) for r in rates] == [2, 2, 2] and memory > 0 and method != "cuda_graph_pool_plus_own_state"
    said = [r.getMessage() for r in caplog.records]
    assert any("the compiled step failed on this host (OSError: no C compiler found for Triton); timing the eager"
               in m for m in said)
    assert any("the captured step failed on this host (RuntimeError: capture failed); timing the eager" in m
               for m in said)
    assert any("the captured step failed on this host (RuntimeError: capture failed); timing the compiled" in m
               for m in said)


# ---------------------------------------------------------------------------------------------
# 3. Placement: everything on a fake cuda:1


@pytest.fixture
def fake():
    """A fake-tensor mode with the synthetic data set on a fake ``cuda:1`` and a ResNet-14 there."""
    mode = FakeTensorMode()
    ds = data(64)
    moved = dataclasses.replace(ds, train=Split(fake_cuda(mode, ds.train.x), fake_cuda(mode, ds.train.y)),
                                test=Split(fake_cuda(mode, ds.test.x), fake_cuda(mode, ds.test.y)),
                                mean=fake_cuda(mode, ds.mean), std=fake_cuda(mode, ds.std))
    torch.manual_seed(0)
    model = build(resnet_plan(14))
    sx, sy = scoring_set(ds, 20, 0)
    return mode, moved, on_fake_cuda(mode, model), ScoringSet(fake_cuda(mode, sx), fake_cuda(mode, sy), 10)


def test_batches_are_gathered_and_augmented_on_the_device(fake):
    mode, ds, _, _ = fake
    t = recipe(channels_last=True).train
    with mode:
        for idx, offsets, flips in epoch_plan(ds, t, 0, 0):
            x, y = batch(ds, t, idx, offsets, flips)
            assert x.device == y.device == FAKE_CUDA and x.shape == (32, 3, 32, 32)


def test_evaluation_and_surgery_stay_on_the_device(fake):
    mode, ds, model, _ = fake
    with mode:
        predictions = trainer.predict(model, ds, recipe().train, FAKE_CUDA)
        assert predictions.shape == (20,)
        shorter = networks.without(model, [networks.anatomy(model).removable[0].path])
        assert {p.device for p in shorter.parameters()} == {FAKE_CUDA}
        assert shorter(ds.normalize(ds.test.x[:2])).device == FAKE_CUDA


@pytest.mark.parametrize("name", ["hrank", "expectabs", "kl", "l1", "random", "block_influence", "angular_distance",
                                  "loss_on_removal"])
def test_activation_and_kl_scoring_stay_on_the_device(fake, name):
    mode, _, model, scoring = fake
    with mode:
        scores = CRITERIA[name].blocks(model, scoring, OmegaConf.structured(kind_config(CRITERIA, name)), 0)
    assert len(scores) == len(networks.anatomy(model).removable)


def test_the_forward_costs_stay_on_the_device(fake, monkeypatch):
    mode, _, model, _ = fake
    monkeypatch.setattr(costs, "synchronize", lambda device: None)  # the one call a fake device cannot take
    with mode:
        assert costs.flops(model) > 0
        times = costs.latencies([model], 2, FAKE_CUDA, 2, recipe().train)
    assert len(times[0]) == 2 and model.training  # put back in the mode it was in


def test_a_cpu_tensor_in_a_cuda_op_fails_here_as_on_a_gpu(fake):
    mode, ds, model, _ = fake
    with mode, pytest.raises(Exception, match="[Dd]evice"):
        model(torch.zeros(2, 3, 32, 32))
