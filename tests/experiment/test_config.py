"""Every bad input gets one clear line before any work."""

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from lottery.errors import LotteryError
from lottery.experiment.design import validate
from lottery.pruning.modes import blocks_to_remove
from lottery.training.trainer import epoch_of, rewind_epochs
from tests.helpers import REPO, compose_cfg


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
@pytest.mark.parametrize("model", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
def test_every_profile_and_model_composes(profile, model):
    cfg = compose_cfg(f"profile={profile}", f"model={model}", "data=synthetic")
    validate(cfg)
    assert cfg.profile_name == profile


def test_density_and_rewind_conversions():
    assert blocks_to_remove(3, 13) == 3
    assert blocks_to_remove(0.25, 13) == 3  # round(3.25)
    assert blocks_to_remove(2.0, 13) == 2
    assert epoch_of(0.125, 200) == 25 and epoch_of(25, 200) == 25 and epoch_of(0.375, 8) == 3
    assert rewind_epochs(compose_cfg("profile=paper").train) == [0, 25, 50, 75]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["criterion.name=magic"], "unknown criterion 'magic'; choose one of: angular_distance, block_influence, expectabs, grasp, hrank, kl, l1, loss_on_removal, pls, random, snip, synflow"),
        (["mode.name=prune"], "unknown mode 'prune'"),
        (["density=13"], "density=13 is above resnet32's maximum of 12"),
        (["model=resnet56", "density=25"], "maximum of 24"),
        (["density=1.5"], "fraction in (0, 1)"),
        (["density=0"], "remove at least one block"),
        (["mode=rewind", "rewind_epoch=4"], "rewind_epoch=4 lies outside the schedule [0, 4)"),
        (["mode=rewind", "rewind_epoch=-1"], "outside the schedule"),
        (["criterion.scoring_size=0"], "criterion grasp needs scoring data"),
        (["criterion.scoring_size=10000"], "exceeds data.train_size=512"),
        (["model.depth=33"], "depth must be 6n+2"),
        (["schedule.milestones=[2,9]"], "[9] lie outside the schedule (1..3)"),
        (["data.train_size=5"], "at least one image per class"),
        (["device=tpu"], "use auto, cpu or cuda"),
        (["optim.lr=-1"], "optim.lr=-1.0: must be > 0 (optim.lr: peak learning rate: reached after the warm-up"),
        (["optim.lr=0"], "optim.lr=0.0: must be > 0"),
        (["optim.momentum=1"], "optim.momentum=1.0: must be in [0, 1)"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1: must be >= 0"),
        (["schedule.milestones=[3,2]"], "must be strictly increasing"),
        (["schedule.milestones=[2,2]"], "must be strictly increasing"),
        (["schedule.gamma=0"], "schedule.gamma=0.0: must be in (0, 1]"),
        (["schedule=cosine", "schedule.floor=1"], "schedule.floor=1.0: must be in [0, 1)"),
        (["optim=adamw", "optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0]: must be two numbers in [0, 1)"),
        (["optim=adamw", "optim.eps=0"], "optim.eps=0.0: must be > 0"),
        (["optim.lr_batch=0"], "optim.lr_batch=0: must be a positive batch size"),
        (["train.clip_norm=0"], "train.clip_norm=0.0: must be > 0, or null"),
        (["train.warmup_epochs=5"], "train.warmup_epochs=5.0: must lie in [0, 4]"),
        (["data.val_size=5"], "data.val_size=5: need at least one image per class"),
        (["jobs=0"], "jobs=0: at least one trial runs"),
        (["data.train_size=99999999"], "GiB of memory, and this machine has"),
        (["data.val_size=99999999"], "use smaller data.train_size / test_size / val_size"),
        (["data=cifar10", "data.train_size=60000"], "data.train_size=60000 exceeds the training split of cifar10: "
                                                    "50000 images"),
        (["data=cifar10", "data.train_size=45000", "data.val_size=6000"],
         "data.train_size + data.val_size = 45000 + 6000 exceeds the training split of cifar10: 50000 images"),
        (["data=cifar10", "data.test_size=10001"], "data.test_size=10001: exceeds the test split of cifar10: 10000"),
    ],
)
def test_bad_input_is_one_clear_line(overrides, message):
    cfg = compose_cfg("profile=smoke", "data=synthetic", *overrides)
    with pytest.raises(LotteryError) as e:
        validate(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_data_folder_errors(tmp_path):
    with pytest.raises(LotteryError, match="does not exist"):
        validate(compose_cfg("data=imagefolder", f"data.root={tmp_path / 'nope'}"))
    (tmp_path / "train").mkdir()
    with pytest.raises(LotteryError, match="train is missing or has no class folders"):
        validate(compose_cfg("data=imagefolder", f"data.root={tmp_path}"))
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(LotteryError, match="no images"):
        validate(compose_cfg("data=imagefolder", f"data.root={tmp_path}"))
    with pytest.raises(LotteryError, match="needs data.root"):
        validate(compose_cfg("data=imagefolder", "data.root=null"))


def test_random_needs_no_scoring_data():
    validate(compose_cfg("profile=smoke", "data=synthetic", "criterion=random", "criterion.scoring_size=0"))


def test_typed_config_rejects_wrong_types_and_unknown_keys():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("model.shortcut=C")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("criterion.temprature=3")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("seed=abc")


def run_cli(*args, cwd):
    """``python -m lottery`` on the CPU (the timeout only stops a hang)."""
    cpu = [] if "--help" in args else ["device=cpu"]
    return subprocess.run([sys.executable, "-m", "lottery", *args, *cpu], cwd=cwd, capture_output=True,
                          text=True, timeout=1200)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    r = run_cli("profile=smoke", "data=synthetic", "density=40", f"store.root={tmp_path}",
                f"hydra.run.dir={tmp_path / 'hydra'}", cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("lottery: error: density=40 is above")
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_unknown_group_choice_lists_the_valid_ones(tmp_path):
    r = run_cli("criterion=magic", cwd=REPO)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "Available options in 'criterion'" in r.stderr and "grasp" in r.stderr


def test_cifar10_missing_offline_names_the_imagefolder_alternative(tmp_path):
    from lottery.training.data import load_dataset

    cfg = compose_cfg("data=cifar10", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(LotteryError, match="CIFAR-10 is not under .* use data=imagefolder data.root=DIR"):
        load_dataset(cfg.data, "cpu")


def test_help_lists_groups_from_the_registries_and_every_key_with_its_help():
    r = run_cli("--help", cwd=REPO)
    assert r.returncode == 0 and "powered by Hydra" not in r.stdout
    assert "GraSP gradient-flow score theta * Hg" in r.stdout  # the criterion registry's own doc
    assert "Algorithm 2 (tickets at initialization)" in r.stdout  # the mode table's
    assert "optim.lr = 0.1: peak learning rate: reached after the warm-up" in r.stdout
    assert "*sgd               SGD with momentum" in r.stdout and "*step              x gamma" in r.stdout
    assert "optim.betas (adamw) = [...]" in r.stdout and "schedule.floor (cosine) = 0.0" in r.stdout
    assert " +paths.root = .lottery:" in r.stdout  # an execution setting, marked


def test_a_failing_trial_never_stops_a_multirun_and_the_summary_names_it(tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")  # the default store below paths.root
    r = run_cli("-m", "profile=smoke", "data=synthetic", "model=resnet20", "density=99,1", f"paths.root={tmp_path}",
                "data.train_size=128",
                "measure.enabled=false", "robustness.enabled=false", "measure.carbon=false", "tracking.log_model=false",
                cwd=REPO)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("2 trials: 1 finished, 0 skipped, 1 failed: density=99: density=99 is above")
    assert "init-grasp-p1-resnet20-s0: ticket" in r.stdout  # the second trial ran after the first failed
    assert list(tmp_path.glob("hydra/multirun/*/*/0/lottery.log"))  # Hydra's job is named lottery


def test_every_schema_field_has_help_and_execution_settings_leave_the_identity():
    from lottery.config import kind_fields, schema_fields
    from lottery.experiment.identity import cell_key, config_key, dense_spec

    assert all(f.metadata["help"] for _, f in schema_fields())
    assert all(f.metadata["help"] for _, _, f in kind_fields())

    def keys(*overrides, data="synthetic"):
        cfg = compose_cfg("profile=smoke", f"data={data}", *overrides)
        return cell_key(cfg, "d"), config_key(cfg, "d", "bf16"), dense_spec(cfg, "d", "bf16")

    base = keys()
    for override in ("threads=1", "jobs=2", "device=cpu", "paths.root=/x", "store.root=/y", "data.cache=/z",
                     "tracking.experiment=e", "tracking.parent=abc", "train.progress=true", "measure.carbon_dir=/c",
                     "train.rewind_points=[0.5]", "store.retrain=true"):
        assert keys(override) == base, override
    for override in ("data.download=false", "data.root=/w"):  # CIFAR-10's own execution settings
        assert keys(override, data="cifar10") == keys(data="cifar10"), override
    # the seed is in the config key, not the cell's; the dense run reads only model, data, recipe, seed
    for override, changed in (("optim.lr=0.05", (1, 1, 1)), ("seed=1", (0, 1, 1)), ("density=2", (1, 1, 0)),
                              ("train.amp=off", (1, 1, 0)), ("measure.cka_images=10", (1, 1, 0)),
                              ("data.train_size=300", (1, 1, 1)), ("model.depth=14", (1, 1, 1))):
        assert tuple(int(a != b) for a, b in zip(keys(override), base)) == changed, override
    assert dense_spec(compose_cfg("profile=smoke", "data=synthetic"), "d", "fp32") != base[2]  # the precision is in
