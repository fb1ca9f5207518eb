"""The data-source contract, checked on every registered source (a new one is picked up by its
registration): it loads ``Arrays`` of its task's format, ``splits`` counts what it loads (the
validation examples included), its fingerprint moves with every setting that changes the data,
and a smoke trial runs on it. CIFAR-10 is faked (torchvision's reader replaced), ``hf_text`` reads
a local file through ``datasets``; nothing is downloaded. And robustness says what it measured: the
released CIFAR-10-C / CIFAR-10.2 sets only where a source declares them, regenerated corruptions
named by their source."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lottery.experiment import trial
from lottery.measure import metrics, robustness
from lottery.training import data as D
from lottery.training.sources.base import IMAGE_SHAPE, SOURCES, Arrays
from lottery.training.tasks.base import TASKS
from tests.helpers import compose_cfg, refusal, write_folder, write_released

CPU = torch.device("cpu")
LM = ["model=hf_causal_lm", "model.width=32"]  # a smoke trial's network for tokens; for images a ResNet-14


class FakeCifar10:
    """torchvision's CIFAR10 reader, faked: the real split sizes, blank images (never touched
    whole: ``np.zeros`` pages in lazily), labels cycling through the 10 classes."""

    classes = [f"class{i}" for i in range(10)]

    def __init__(self, root, train, download):
        n = 50_000 if train else 10_000
        self.data = np.zeros((n, 32, 32, 3), np.uint8)
        self.data[:, :4, :4] = (np.arange(n) % 10 * 25).astype(np.uint8)[:, None, None, None]  # a learnable corner
        self.targets = list(np.arange(n) % 10)


def _text_folder(root, name, lines=40):
    root.mkdir()
    for i, prefix in enumerate(("a", "b", "c")):
        (root / f"{prefix}{name}.txt").write_text(f"Document {prefix}{i} of {name}: plain words here. " * lines)
    return root


def cases(tmp_path, monkeypatch) -> dict[str, dict]:
    """Per source: the overrides of a small, offline config (``data``), the values its settings
    change to (``vary``, beside the generic ones of ``variant``), and the settings that by design change
    nothing under a config like this one (``same``, with why)."""
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCifar10)
    folder = write_folder(tmp_path / "folder", per_class=(8, 4))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i} of a small corpus of plain text." for i in range(300)) + "\n")
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"Row {i}, another corpus altogether." for i in range(300)) + "\n")
    texts, more = _text_folder(tmp_path / "texts", "one"), _text_folder(tmp_path / "more", "two")
    return {
        "cifar10": {"data": ["data.train_size=64", "data.test_size=40"]},
        "digits": {"data": ["data.train_size=64", "data.test_size=40"], "vary": {"image_size": 8}},
        "imagefolder": {"data": [f"data.root={folder}", "data.train_size=null", "data.test_size=null"]},
        "synthetic": {"data": ["data.train_size=64", "data.test_size=40"], "vary": {"num_classes": 3}},
        "synthetic_text": {"data": ["data.documents=60", "data.seq_len=16", "data.train_size=48",
                                    "data.test_size=8"]},
        "text": {"data": [f"data.root={texts}", "data.seq_len=16", "data.train_size=48", "data.test_size=8"],
                 "vary": {"root": str(more), "include": "[ab]*.txt"}},
        "hf_text": {"data": ["data.dataset=text", f"data.data_files=[{corpus}]", "data.subset=null",
                             "data.seq_len=16", "data.train_size=48", "data.test_size=8"],
                    "vary": {"data_files": [str(other)], "subset": "other"},
                    "same": {"revision": "a hub revision, and local data_files are read from no hub"}},
    }


@pytest.fixture
def case(request, tmp_path, monkeypatch):
    """The named source's case, composed as the CLI composes it (its YAML file included); a source
    without one runs on its YAML file's config, so one that needs files fails here until it has one."""
    name = request.param
    c = dict(cases(tmp_path, monkeypatch).get(name, {"data": []}))  # a new source: its YAML file's config
    c["cfg"] = compose_cfg("profile=smoke", f"data={name}", f"data.cache={tmp_path / 'cache'}", *c["data"])
    return c


def each_source(test):
    """Parametrised over every registered source."""
    return pytest.mark.parametrize("case", list(SOURCES), indirect=True)(test)


def variant(value):
    """A generic other value of a setting (``None`` where none can be derived from its type)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "-other"
    return None


@each_source
def test_a_source_loads_arrays_of_its_tasks_format_and_its_splits_count_them(case):
    cfg = case["cfg"].data
    src = SOURCES[cfg.name]
    src.check(cfg)
    for val in (None, 4):
        sized = OmegaConf.merge(cfg, {"val_size": val})
        arrays = src.load(sized)
        assert isinstance(arrays, Arrays)
        assert src.splits(sized) == (len(arrays.train_y), len(arrays.test_y)), "splits counts what load returns"
        assert len(arrays.classes) == src.classes(sized)
        for x, y in ((arrays.train_x, arrays.train_y), (arrays.test_x, arrays.test_y)):
            assert len(x) == len(y) > 0
            if TASKS[src.task].inputs == "images":
                c, h, w = src.shape(sized)
                assert x.dtype == np.uint8 and x.shape[1:] == (h, w, c), "NHWC uint8 images"
                assert y.dtype == np.int64 and y.ndim == 1 and 0 <= y.min() and y.max() < src.classes(sized)
            else:
                assert x.ndim == 2 and x.shape[1] == src.shape(sized)[0] + 1, "token windows of T + 1"
                assert np.array_equal(y, np.arange(len(y))) and int(x.max()) < src.classes(sized)
    d = D.load_dataset(OmegaConf.merge(cfg, {"val_size": 4}), CPU)
    assert len(d.val) == 4 and len(d.train) == (cfg.train_size or src.splits(cfg)[0] - 4)
    assert d.source == cfg.name and d.fingerprint == D.fingerprint(OmegaConf.merge(cfg, {"val_size": 4}))


@each_source
def test_the_fingerprint_moves_with_every_setting_that_changes_the_data(case):
    cfg = case["cfg"].data
    settings = SOURCES.settings_of(cfg.name)
    data_keys = [f.name for f in dataclasses.fields(settings) if not f.metadata.get("execution") and f.name != "name"]
    vary, same = case.get("vary", {}), case.get("same", {})
    base = D.fingerprint(cfg)
    for key in data_keys:
        if key in same:
            continue
        other = vary[key] if key in vary else variant(cfg[key]) if cfg[key] is not None else 4
        assert other is not None, f"data.{key} of {cfg.name}: give the value it changes to in cases()"
        changed = OmegaConf.merge(cfg, {key: other})
        assert D.fingerprint(changed) != base, f"data.{key} of {cfg.name} changes the data, not its fingerprint"


@each_source
def test_a_smoke_trial_runs_on_every_source(case, tmp_path, tracking_uri):
    shape = D.shape_of(case["cfg"].data)
    corrupted = shape.kind == "images" and tuple(shape.input) == IMAGE_SHAPE  # what the corruptions are defined on
    cfg = compose_cfg(
        "profile=smoke", f"data={case['cfg'].data.name}", *case["data"],
        *(LM if shape.kind == "tokens" else ["model=resnet20", "model.depth=14"]),
        "criterion=random", "criterion.scoring_size=16", "density=1", "train.epochs=2",
        f"paths.root={tmp_path}", f"data.cache={tmp_path / 'cache'}", f"tracking.uri={tracking_uri}",
        f"tracking.experiment={tmp_path.name}", "tracking.log_model=false", "measure.enabled=false",
        "measure.carbon=false", "measure.cka_images=16", "robustness.corruptions=[gaussian_noise]",
        "robustness.severities=[1]", "robustness.images=20", f"robustness.enabled={corrupted}", "threads=1")
    out = trial.run(cfg)
    assert 0 <= out["accuracy"] <= 100 and out["run_id"]
    tags = mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data.tags
    task = TASKS[SOURCES[cfg.data.name].task]
    expected = (f"not defined for {task.name}" if not task.shifted_sets
                else robustness.regenerated_label(cfg.data.name) if corrupted else "none")
    assert tags["cifar10c_label"] == expected


# --------------------------------------------------------------------------------------------
# Robustness says what it measured


def test_regenerated_corruptions_are_named_by_their_source_and_the_released_ones_cifar10c(tmp_path):
    cfg = compose_cfg("profile=smoke", "data=digits", "data.train_size=50", "data.test_size=40",
                      "robustness.corruptions=[gaussian_noise]", "robustness.severities=[1]", "robustness.images=20")
    digits = D.load_dataset(cfg.data, CPU)
    shifted = robustness.load_shifted(cfg.robustness, digits, str(tmp_path), CPU)
    label = "corruptions (CIFAR-10-C's, regenerated on digits)"
    assert shifted.cifar10c_source == "regenerated" and shifted.tags()["cifar10c_label"] == label
    assert metrics.console({"cifar10c_delta_pp": 0.5}, shifted.labels()) == f"{label} +0.50 pp"
    released = OmegaConf.merge(cfg.robustness, {"cifar10c_root": str(write_released(tmp_path)), "corruptions": ["fog"]})
    shifted = robustness.load_shifted(released, digits, str(tmp_path), CPU)
    assert shifted.cifar10c_source == "released" and shifted.tags()["cifar10c_label"] == "CIFAR-10-C"
    assert metrics.console({"cifar10c_delta_pp": 0.5}, shifted.labels()) == "CIFAR-10-C +0.50 pp"
    assert metrics.console({"cifar10c_delta_pp": 0.5}) == "CIFAR-10-C +0.50 pp"  # a row's own name


def test_a_released_set_for_a_source_it_does_not_apply_to_is_one_line(tmp_path):
    root = write_released(tmp_path)
    np.savez(tmp_path / "c102.npz", images=np.zeros((10, 32, 32, 3), np.uint8), labels=np.arange(10))
    for key, path in (("cifar10c_root", root), ("cifar102_path", tmp_path / "c102.npz")):
        line = refusal("data=digits", f"robustness.{key}={path}")
        assert line.startswith(f"robustness.{key}={path}: the released ") and "data=digits" in line
        assert "is not CIFAR-10: leave it unset" in line
        assert "robustness.enabled=false" not in line
    folder = write_folder(tmp_path / "folder")
    assert "data.cifar10=true" in refusal("data=imagefolder", f"data.root={folder}", "data.train_size=null",
                                          "data.test_size=null", f"robustness.cifar10c_root={root}")
    assert not SOURCES["text"].released_sets(compose_cfg("data=text", "data.root=x").data)
    assert SOURCES["cifar10"].released_sets(compose_cfg("data=cifar10").data)
    accepted = compose_cfg("data=imagefolder", f"data.root={folder}", "data.cifar10=true").data
    assert SOURCES["imagefolder"].released_sets(accepted)
