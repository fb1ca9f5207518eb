import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lottery.config import RobustnessConfig
from lottery.training import batches as B
from lottery.training import data as D
from lottery.training.sources import imagefolder
from lottery.training.sources.base import SOURCES
from lottery.training.tasks.base import balanced_indices
from tests.helpers import kind_config, train_config, write_folder


def cfg(name, **kw):
    return OmegaConf.structured(kind_config(SOURCES, name, **kw))


def test_balanced_subset_counts():
    labels = np.repeat(np.arange(10), 50)
    idx = balanced_indices(labels, 103, seed=0)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() == 1
    assert np.array_equal(idx, balanced_indices(labels, 103, seed=0))


def test_synthetic_is_deterministic_and_balanced():
    a = D.load_dataset(cfg(name="synthetic", train_size=200, test_size=50), torch.device("cpu"))
    b = D.load_dataset(cfg(name="synthetic", train_size=200, test_size=50), torch.device("cpu"))
    assert torch.equal(a.train.x, b.train.x) and a.fingerprint == b.fingerprint
    assert a.train.x.dtype == torch.uint8 and a.train.x.shape == (200, 3, 32, 32)
    assert torch.bincount(a.train.y).tolist() == [20] * 10
    torch.testing.assert_close(a.normalize(a.train.x).mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)


def test_crop_flip_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g)
    offsets = torch.randint(0, 9, (5, 2), generator=g)
    flips = torch.tensor([True, False, True, False, True])
    got = B.crop_flip(x, offsets, flips)
    for i in range(5):
        p = F.pad(x[i], (4, 4, 4, 4))
        oy, ox = offsets[i].tolist()
        ref = p[:, oy:oy + 32, ox:ox + 32]
        ref = ref.flip(-1) if flips[i] else ref
        assert torch.equal(got[i], ref)


def test_epoch_batches_depend_only_on_seed_and_epoch():
    ds = D.load_dataset(cfg(name="synthetic", train_size=100, test_size=20), torch.device("cpu"))
    t = train_config(batch_size=32).train

    def batches(epoch):  # what the trainer's step gathers: the epoch's plan, each batch built on the device
        return [B.batch(ds, t, *planned)[0] for planned in B.epoch_plan(ds, t, seed=1, epoch=epoch)]

    first, again, other = batches(2), batches(2), batches(3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert [len(x) for x in first] == [32, 32, 32, 4]
    assert first[0].is_contiguous(memory_format=torch.channels_last)


def test_imagefolder_decodes_once_and_caches_outside_the_data_folder(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    c = cfg(name="imagefolder", root=str(root), cache=str(tmp_path / "cache"))
    SOURCES["imagefolder"].check(c)
    ds = D.load_dataset(c, torch.device("cpu"))
    assert ds.classes == ["cat", "dog", "eel"] and len(ds.train) == 18 and len(ds.test) == 9
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written there
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 1

    def no_decoding(path):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "_decode", no_decoding)
    again = D.load_dataset(c, torch.device("cpu"))
    assert torch.equal(again.train.x, ds.train.x)


def test_imagefolder_resizes_other_sizes(tmp_path):
    root = write_folder(tmp_path / "data", per_class=(2, 1), size=40)
    ds = D.load_dataset(cfg(name="imagefolder", root=str(root), cache=str(tmp_path / "c")), torch.device("cpu"))
    assert ds.train.x.shape == (6, 3, 32, 32)


def test_scoring_set_is_balanced_and_unaugmented():
    ds = D.load_dataset(cfg(name="synthetic", train_size=100, test_size=20), torch.device("cpu"))
    x, y = B.scoring_set(ds, 30, seed=0)
    assert torch.bincount(y).tolist() == [3] * 10
    # unaugmented: every scoring image is exactly a normalised training image
    flat = ds.normalize(ds.train.x).flatten(1)
    assert all((flat == xi.flatten()).all(1).any() for xi in x)


def test_every_prefix_of_a_subset_holds_every_class():
    labels = np.repeat(np.arange(10), 50)  # stored class by class, like an image folder
    idx = balanced_indices(labels, 200, seed=3)
    for n in (10, 25, 100, 200):
        counts = np.bincount(labels[idx[:n]], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
    assert len(set(idx)) == 200


def sorted_folder_dataset(tmp_path, **kw):
    root = write_folder(tmp_path / "data", per_class=(20, 12), classes=("ant", "bee", "cat", "dog"))
    return D.load_dataset(cfg(name="imagefolder", root=str(root), cache=str(tmp_path / "cache"), **kw),
                          torch.device("cpu"))


def balanced(labels, n_classes=4) -> bool:
    counts = torch.bincount(torch.as_tensor(labels).flatten().long(), minlength=n_classes)
    return int(counts.max() - counts.min()) <= 1


def test_every_consumer_takes_balanced_images_from_a_class_sorted_folder(tmp_path, monkeypatch):
    from lottery.config import MeasureConfig
    from lottery.measure import robustness, similarity
    from lottery.networks.cifar_resnet import build
    from tests.helpers import resnet_plan

    ds = sorted_folder_dataset(tmp_path, train_size=40, test_size=24)
    assert balanced(ds.train.y) and balanced(ds.test.y)
    assert balanced(ds.test.y[:6]) and balanced(ds.train.y[:10])  # prefixes too
    _, y = B.scoring_set(ds, 24, seed=0)
    assert all(balanced(chunk) for chunk in y.split(8))  # every scoring chunk: BN sees every class
    seen = []
    monkeypatch.setattr(similarity, "features", lambda m, batches: seen.append(torch.cat([b[1] for b in batches]))
                        or torch.randn(sum(len(b[1]) for b in batches), 4))
    c = OmegaConf.create({"measure": OmegaConf.structured(MeasureConfig(cka_images=6)),
                          "train": train_config(eval_batch_size=4).train})
    model = build(resnet_plan(8, num_classes=4))
    similarity.cka_to_dense(model, model, ds, c)
    assert len(seen[0]) == 6 and balanced(seen[0])
    shift = OmegaConf.structured(RobustnessConfig(severities=[1], images=6, seed=0))
    sets = robustness.regenerated_cifar10c(shift, ds, ["contrast"], tmp_path / "c10c", torch.device("cpu"))
    assert len(sets[0][2]) == 6 and balanced(sets[0][2].y)


def test_released_cifar10c_images_are_balanced_too(tmp_path):
    from lottery.measure import robustness

    root = tmp_path / "c10c"
    root.mkdir()
    labels = np.tile(np.repeat(np.arange(4), 5), 5).astype(np.uint8)  # class-sorted within each severity
    np.save(root / "labels.npy", labels)
    np.save(root / "fog.npy", np.zeros((100, 32, 32, 3), np.uint8))
    released = OmegaConf.structured(RobustnessConfig(cifar10c_root=str(root), corruptions=["fog"], severities=[2],
                                                     images=8))
    (name, severity, split), = robustness.released_cifar10c(released, torch.device("cpu"))
    assert len(split) == 8 and balanced(split.y)


def test_validation_split_is_held_out_of_the_training_images(tmp_path):
    ds = sorted_folder_dataset(tmp_path, val_size=8)
    assert len(ds.val) == 8 and len(ds.train) == 72 and balanced(ds.val.y)
    train = {bytes(x.numpy()) for x in ds.train.x}
    assert not any(bytes(x.numpy()) in train for x in ds.val.x)
    assert "val=8" in ds.fingerprint


def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path):
    import pytest

    from lottery.errors import LotteryError

    root = write_folder(tmp_path / "data", per_class=(2, 1))
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(LotteryError) as e:
        D.load_dataset(cfg(name="imagefolder", root=str(root), cache=str(tmp_path / "c")), torch.device("cpu"))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_a_subset_larger_than_its_folder_is_one_line_naming_the_split(tmp_path):
    from lottery.errors import LotteryError

    root = write_folder(tmp_path / "data")  # 3 classes: 18 training and 9 test images
    with pytest.raises(LotteryError, match="data.train_size=30 exceeds the training split of imagefolder: 18 images"):
        D.check(cfg(name="imagefolder", root=str(root), train_size=30))
    with pytest.raises(LotteryError, match="data.test_size=10: exceeds the test split of imagefolder: 9 images"):
        D.check(cfg(name="imagefolder", root=str(root), test_size=10))


def test_byte_text_is_resident_as_uint8_windows_and_batched_as_int64():
    """One uint8 array of windows of T + 1 tokens (inputs and targets two views of it), not int64
    inputs plus int64 targets (16 bytes a token); each batch is widened on its device."""
    text = cfg(name="synthetic_text", documents=200, seq_len=31, train_size=64, test_size=16)
    ds = D.load_dataset(text, torch.device("cpu"))
    x, y = ds.train.x, ds.train.y
    assert x.dtype == y.dtype == torch.uint8 and x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    assert x.untyped_storage().nbytes() / x.numel() <= 2 and torch.equal(x[:, 1:], y[:, :-1])
    assert ds.task.resident_bytes((31,)) / 31 <= 2 and ds.shape.input == (31,)
    t = train_config(batch_size=16).train
    inputs, targets = B.batch(ds, t, *next(B.epoch_plan(ds, t, seed=0, epoch=0)))
    assert inputs.dtype == targets.dtype == torch.int64 and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert all(b.dtype == torch.int64 for xy in B.eval_batches(ds, ds.test, 8) for b in xy)
    assert B.scoring_set(ds, 8, seed=0)[1].dtype == torch.int64


def test_token_ids_past_a_byte_keep_a_wider_type():
    from lottery.training.tasks.language_modeling import narrowest

    assert [narrowest(np.array([[0, top]])) for top in (255, 256, 40_000, 2**31)] == [
        np.uint8, np.int16, np.int32, np.int64]
