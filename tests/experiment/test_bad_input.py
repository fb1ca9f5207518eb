"""Every bad input is one line, exit status 2, before any work: the battery a new user tried."""

import sys

import pytest

from lottery import __main__ as entry_point
from lottery.config import CONF
from lottery.errors import LotteryError
from lottery.experiment import sweeps
from lottery.experiment.design import validate
from lottery.paper import report, tables
from tests.helpers import compose_cfg, refusal


def one_line(run, capsys) -> str:
    """The status and the last line a command printed on stderr, asserted to be our one line."""
    status = run()
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err and err[-1].startswith("lottery: error: "), err
    assert not any("Traceback" in line or "HYDRA_FULL_ERROR" in line or line.startswith("usage:") for line in err), err
    return err[-1]


def cli(monkeypatch, *args):
    """``python -m lottery ARGS`` in this process: the status it exits with."""
    monkeypatch.setattr(sys, "argv", ["lottery", "profile=smoke", "data=synthetic", "device=cpu", *args])
    with pytest.raises(SystemExit) as e:
        entry_point.main()
    return e.value.code


@pytest.mark.parametrize("args,says", [
    (["criterion=magic"], "Could not find 'criterion/magic'; Available options in 'criterion': angular_distance"),
    (["density=abc"], "Error merging override density=abc: Value 'abc'"),
    (["model=resnet33"], "Could not find 'model/resnet33'; Available options in 'model': convnext_tiny"),
    (["profile=foo"], "Available options in 'profile': paper, quick, smoke"),
    (["train.lrr=1"], "Could not override 'train.lrr': Key 'lrr' not in 'TrainConfig'"),
    (["train.lr=0.1"], "Key 'lr' not in 'TrainConfig'; train.lr is now optim.lr (the optim= and schedule="),
    (["train.milestones=[2,3]"], "train.milestones is now schedule.milestones"),
    (["model=resnet18", "model.stem=bogus"], "Invalid value 'bogus', expected one of [default, cifar]"),
    (["-m", "density=1,abc"], "Error merging override density=abc"),  # a bad value of a sweep
    (["paths.root=/proc/lottery-root"], "paths.root=/proc/lottery-root cannot be written"),
])
def test_a_config_that_does_not_compose_is_one_line_before_hydra_starts(monkeypatch, capsys, args, says):
    assert says in one_line(lambda: cli(monkeypatch, *args), capsys)


@pytest.mark.parametrize("command", [sweeps.main, tables.main])
def test_the_sweep_and_table_commands_name_the_profiles_they_know(command, capsys):
    line = one_line(lambda: command(["table2", "--profile", "nosuch"]), capsys)
    assert "Could not find 'profile/nosuch'; Available options in 'profile': paper, quick, smoke" in line


@pytest.mark.parametrize("command", [sweeps.main, tables.main, report.main])
def test_the_commands_help_lists_every_data_config_there_is(command, capsys):
    with pytest.raises(SystemExit) as e:
        command(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps at spaces
    names = sorted(f.stem for f in (CONF / "data").glob("*.yaml"))
    assert e.value.code == 0 and "digits" in names and f"one of: {', '.join(names)}" in out


@pytest.mark.parametrize("command,args,says", [
    (sweeps.main, ["table2", "--jobs", "abc"], "python -m lottery sweep: argument --jobs: invalid int value: 'abc'"),
    (tables.main, ["table2", "--bogus"], "python -m lottery table: unrecognized arguments: --bogus (see"),
])
def test_a_bad_command_argument_is_one_line_not_the_usage_page(command, args, says, capsys):
    def run():
        with pytest.raises(SystemExit) as e:
            command(args)
        return e.value.code

    assert says in one_line(run, capsys)


@pytest.mark.parametrize("overrides,says", [
    (["seed=-1"], "seed=-1: seeds are integers >= 0"),
    (["criterion.batch_size=0"], "criterion.batch_size=0: score in chunks of at least one image"),
    (["threads=-2"], "threads=-2: give a thread count >= 1, or null for torch's default"),
    (["threads=0"], "threads=0: give a thread count >= 1"),
    (["density=1.0"], "density=1.0: is ambiguous: write 1 for one block, or a fraction below 1"),
    (["paths.root=/proc/lottery-root"], "paths.root=/proc/lottery-root cannot be written"),
    (["tracking.uri=sqlite:////proc/lottery/mlflow.db"], "tracking.uri (the folder of its database)=/proc/lottery "
                                                         "cannot be written"),
    (["data=digits", "data.image_size=8"], "robustness (CIFAR-10-C, CIFAR-10.2) is measured on 3x32x32 images, and "
                                           "these are 1x8x8: set robustness.enabled=false"),
    (["data=digits", "data.image_size=16"], "data.image_size=16: give one of 8, 32"),
])
def test_bad_values_are_one_line_before_any_work(overrides, says):
    assert says in refusal(*overrides)


def test_one_class_data_and_a_broken_model_module_are_one_line(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32)).save(tmp_path / "one" / split / "cat" / f"{i}.png")
    with pytest.raises(LotteryError, match="data imagefolder has 1 class: a classifier needs at least 2 classes"):
        validate(compose_cfg("data=imagefolder", f"data.root={tmp_path / 'one'}"))
    (tmp_path / "broken_model.py").write_text("def make(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LotteryError) as e:
        validate(compose_cfg("profile=smoke", "data=synthetic", "model=custom", "model.target=broken_model:make",
                             "model.blocks=[a]"))
    assert str(e.value) == f"model.target=broken_model:make: {tmp_path / 'broken_model.py'}, line 1: invalid syntax"
