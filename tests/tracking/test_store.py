import json
import multiprocessing as mp
import os
import time

import pytest
import torch

from lottery.errors import LotteryError
from lottery.files import content_key
from lottery.tracking.store import DenseResult, DenseStore


def fake_training(marker=None, delay=0.0):
    def run(partial):
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(delay)
        w = {"w": torch.arange(4.0)}
        return DenseResult({0: {"w": torch.zeros(4)}, 2: {"w": torch.ones(4)}}, w, {"accuracy": 50.0})

    return run


def _worker(root, key, marker, queue):
    entry, trained = DenseStore(root).get_or_train(key, {"k": 1}, fake_training(marker, delay=1.0))
    queue.put((trained, entry.metrics["accuracy"]))


def test_key_ignores_order_and_changes_with_content():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_entry_is_reused_and_holds_its_checkpoints(tmp_path):
    store, marker = DenseStore(tmp_path), tmp_path / "trained"
    entry, trained = store.get_or_train("k1", {"x": 1}, fake_training(marker))
    assert trained and entry.epochs == [0, 2]
    entry, trained = store.get_or_train("k1", {"x": 1}, fake_training(marker))
    assert not trained and marker.read_text().count("\n") == 1
    assert torch.equal(entry.weights(2)["w"], torch.ones(4))
    assert torch.equal(entry.weights("final")["w"], torch.arange(4.0))
    with pytest.raises(LotteryError, match=r"holds theta at epochs \[0, 2\], not theta_1"):
        entry.weights(1)


def test_an_added_checkpoint_passes_the_integrity_check_and_sets_where_replays_start(tmp_path):
    store = DenseStore(tmp_path)
    entry, _ = store.get_or_train("k3", {"x": 1}, fake_training())
    assert entry.replay_start(1) == 0 and entry.optimizer(0) is None  # SGD starts without state
    with pytest.raises(LotteryError, match="no optimizer state at epoch 2"):
        entry.optimizer(2)  # kept by an entry written without it: no replay may start there
    assert entry.replay_start(3) == 0
    store.add_checkpoint(entry, 3, {"w": torch.full((4,), 3.0)}, {"state": {0: {"m": torch.ones(2)}}})
    again = store.load("k3")  # every file, the new ones included, is checked against its SHA-256
    assert again.epochs == [0, 2, 3] and again.replay_start(5) == 3
    assert torch.equal(again.weights(3)["w"], torch.full((4,), 3.0))
    assert torch.equal(again.optimizer(3)["state"][0]["m"], torch.ones(2))


def test_concurrent_requests_train_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue, marker = ctx.Queue(), tmp_path / "trained"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), "k2", str(marker), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1200) for _ in procs]  # only stops a hang
    for p in procs:
        p.join(timeout=600)
    assert sorted(r[0] for r in results) == [False, True]  # one trained, the other reused
    assert marker.read_text().count("\n") == 1


@pytest.mark.parametrize("damage", ["no_meta", "bad_checksum", "truncated_weights"])
def test_half_written_or_corrupt_entry_is_retrained(tmp_path, damage):
    store, marker = DenseStore(tmp_path), tmp_path / "trained"
    entry, _ = store.get_or_train("k3", {}, fake_training(marker))
    if damage == "no_meta":
        (entry.path / "meta.json").unlink()
    elif damage == "bad_checksum":
        meta = json.loads((entry.path / "meta.json").read_text())
        meta["files"]["theta_final.pt"] = "0" * 64
        (entry.path / "meta.json").write_text(json.dumps(meta))
    else:
        data = (entry.path / "theta_2.pt").read_bytes()
        (entry.path / "theta_2.pt").write_bytes(data[: len(data) // 2])
    entry, trained = store.get_or_train("k3", {}, fake_training(marker))
    assert trained and marker.read_text().count("\n") == 2
    assert list(tmp_path.glob("dense/k3.corrupt-*"))  # set aside, for a human to inspect


def test_leftover_temporary_folder_is_not_an_entry(tmp_path):
    store = DenseStore(tmp_path)
    (store.dir / ".k4.tmp-123").mkdir(parents=True)
    assert store.load("k4") is None


def test_retrain_replaces_the_entry(tmp_path):
    store, marker = DenseStore(tmp_path), tmp_path / "trained"
    store.get_or_train("k5", {}, fake_training(marker))
    _, trained = store.get_or_train("k5", {}, fake_training(marker), retrain=True)
    assert trained and marker.read_text().count("\n") == 2
