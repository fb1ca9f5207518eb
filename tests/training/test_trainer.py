import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lottery.networks.cifar_resnet import build
from lottery.training.data import load_dataset
from lottery.training.sources.base import SOURCES
from lottery.training.schedules import lr_at
from lottery.training.trainer import Job, train
from tests.helpers import PINNED, REPO, compose_cfg, kind_config, resnet_plan, train_config

CPU = torch.device("cpu")


def small_data():
    from omegaconf import OmegaConf

    return load_dataset(OmegaConf.structured(kind_config(SOURCES, "synthetic", train_size=64, test_size=20)), CPU)


def recipe(**kw):

    return train_config(epochs=6, milestones=[2, 4], batch_size=32, progress=False, **kw)


def test_multistep_schedule():
    t = recipe()
    assert [lr_at(t, e) for e in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def lrs_seen(monkeypatch, **train_kw):
    seen = []
    step = torch.optim.SGD.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    torch.manual_seed(0)
    train(build(resnet_plan(8)), small_data(), Job(recipe(), 0, CPU, **train_kw))
    monkeypatch.undo()
    return seen


def test_ticket_lr_at_step_k_equals_dense_lr_at_step_i_plus_k(monkeypatch):
    dense = lrs_seen(monkeypatch)
    for i in (1, 3):
        ticket = lrs_seen(monkeypatch, start=i)
        steps_per_epoch = len(dense) // 6
        assert ticket == dense[i * steps_per_epoch:]


def test_same_seed_same_weights_and_kept_checkpoints():
    def run():
        torch.manual_seed(0)
        model = build(resnet_plan(8))
        theta0 = {k: v.clone() for k, v in model.state_dict().items()}
        done = train(model, small_data(), Job(recipe(), 0, CPU, keep=frozenset({0, 3})))
        return model, theta0, done

    a, theta0, done = run()
    b, _, _ = run()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert sorted(done.checkpoints) == [0, 3]
    assert all(torch.equal(done.checkpoints[0][k], theta0[k]) for k in theta0)
    assert not torch.equal(done.checkpoints[3]["fc.weight"], theta0["fc.weight"])


def test_sigkilled_dense_training_resumes_to_identical_weights(tmp_path, new_store):
    """Kill a smoke dense run after its first epoch; the re-run ends where an uninterrupted one does."""
    common = ["profile=smoke", "data=synthetic", "model=resnet20", "mode=dense", "train.epochs=3", "device=cpu",
              "data.train_size=256", "measure.enabled=false", "robustness.enabled=false", "measure.carbon=false",
              "train.save_every_s=0",
              "schedule.milestones=[2]", f"tracking.uri={new_store(tmp_path / 'db.sqlite')}", "tracking.log_model=false",
              f"threads={torch.get_num_threads()}",  # both runs alike: a thread count can change the sums
              f"measure.carbon_dir={tmp_path / 'cc'}", f"hydra.run.dir={tmp_path / 'hydra'}",
              *PINNED]  # the CLI's runs on the path the clean run takes

    def cli(store, **kw):
        return subprocess.Popen([sys.executable, "-m", "lottery", *common, f"store.root={store}"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)

    victim = cli(tmp_path / "killed")
    deadline = time.time() + 1200  # only stops a hang
    state = None
    while time.time() < deadline and victim.poll() is None:
        found = list((tmp_path / "killed" / "dense").glob("*.partial/state.pt"))
        if found:
            state = found[0]
            break
        time.sleep(0.05)
    assert state is not None, "the dense training never wrote its epoch state"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["epoch"] < 3
    assert not list((tmp_path / "killed" / "dense").glob("*/meta.json"))  # nothing looks finished

    p = cli(tmp_path / "killed")
    out = p.communicate(timeout=1200)[0].decode()
    assert p.returncode == 0 and "resuming from the state saved after epoch" in out, out
    from lottery.experiment import trial  # the uninterrupted run, in this process: the same config, another store

    trial.run(compose_cfg(*(o for o in common if not o.startswith("hydra")), f"store.root={tmp_path / 'clean'}"))
    finals = [torch.load(next((tmp_path / s / "dense").glob("*/theta_final.pt")), weights_only=True)
              for s in ("killed", "clean")]
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k
