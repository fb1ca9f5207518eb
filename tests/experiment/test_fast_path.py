"""The fast path a trial settles on: which candidates the config leaves open, the choice (margin,
compile paying for itself), timing once per machine and architecture and remembering it, and a
whole trial tagged with what it took."""

import json
import logging

import mlflow
import pytest
import torch

from lottery.experiment import fast_path, identity, trial
from lottery.experiment.fast_path import DEFAULT, ROUNDS, FastPath, candidates, decide, rounds_of, settle
from lottery.files import content_key
from lottery.training.devices import restored
from tests.helpers import compose_cfg

CPU = torch.device("cpu")
EAGER_CONTIGUOUS, COMPILED = FastPath(False, False), FastPath(True, True)


def steady(rates: dict) -> dict:
    """Each path at one rate in every round."""
    return {p: [r] * ROUNDS for p, r in rates.items()}


def open_cfg(tmp_path, *overrides):
    """A smoke trial whose layout and compile are left to the fast path."""
    return compose_cfg("profile=smoke", "data=synthetic", "model=resnet20", "train.channels_last=null",
                       "train.compile=null", f"store.root={tmp_path / 'store'}", f"paths.root={tmp_path}", *overrides)


def test_the_config_leaves_open_what_it_does_not_set_default_first(tmp_path):
    assert candidates(open_cfg(tmp_path)) == [DEFAULT, EAGER_CONTIGUOUS, COMPILED, FastPath(False, True)]
    assert candidates(open_cfg(tmp_path, "train.channels_last=false")) == [EAGER_CONTIGUOUS, FastPath(False, True)]
    assert candidates(open_cfg(tmp_path, "train.compile=true")) == [COMPILED, FastPath(False, True)]
    assert candidates(open_cfg(tmp_path, "train.cuda_graph=true")) == [DEFAULT, EAGER_CONTIGUOUS]  # never compiled
    text = open_cfg(tmp_path, "data=synthetic_text", "model=hf_causal_lm")
    assert candidates(text) == [DEFAULT, COMPILED]  # a layout is for images


def test_a_near_tie_keeps_the_default_and_a_compile_must_pay_for_itself():
    rates = {DEFAULT: 100.0, EAGER_CONTIGUOUS: 104.0}
    assert decide(steady(rates), DEFAULT, training_s=1000, compile_s=0) == DEFAULT  # 4 % is within MARGIN
    assert decide(steady({**rates, EAGER_CONTIGUOUS: 110.0}), DEFAULT, 1000, 0) == EAGER_CONTIGUOUS
    fast = {DEFAULT: 100.0, COMPILED: 150.0}  # saves a third of the training
    assert decide(steady(fast), DEFAULT, training_s=60, compile_s=30) == DEFAULT  # saves 20 s, costs 30 s
    assert decide(steady(fast), DEFAULT, training_s=600, compile_s=30) == COMPILED  # saves 200 s
    assert decide(steady({**fast, EAGER_CONTIGUOUS: 140.0}), DEFAULT, 60, 30) == EAGER_CONTIGUOUS  # the best that pays
    # the soonest of those past the margin, though the soonest of all is not past it
    near = {DEFAULT: 100.0, EAGER_CONTIGUOUS: 104.9, FastPath(False, True): 106.0}
    assert decide(steady(near), DEFAULT, training_s=1000, compile_s=20) == FastPath(False, True)
    both = {COMPILED: 100.0, FastPath(False, True): 110.0}  # the config compiles: every path pays alike
    assert decide(steady(both), COMPILED, training_s=1000, compile_s=100) == FastPath(False, True)


def test_another_path_is_taken_only_when_faster_by_the_margin_in_every_paired_round():
    lucky = {DEFAULT: [100.0] * 5, EAGER_CONTIGUOUS: [130.0, 130.0, 130.0, 130.0, 95.0]}  # median 130, one round slower
    assert decide(lucky, DEFAULT, training_s=1000, compile_s=0) == DEFAULT
    # the host slows down to half and back: a lead of 10 % in each round is a lead, though the
    # path's slowest round (55) is far below the default's fastest (100)
    drift = {DEFAULT: [100.0, 50.0, 50.0, 100.0, 100.0], EAGER_CONTIGUOUS: [110.0, 55.0, 55.0, 110.0, 110.0]}
    assert decide(drift, DEFAULT, training_s=1000, compile_s=0) == EAGER_CONTIGUOUS


def test_the_timed_steps_are_read_as_rounds_of_consecutive_steps():
    assert rounds_of([100.0, 100.0, 50.0, 50.0, 200.0, 200.0, 100.0, 100.0, 100.0, 100.0]) == [100, 50, 200, 100, 100]
    assert rounds_of([100.0, 300.0]) == [100.0, 300.0]  # fewer steps than rounds: a round each
    assert rounds_of([100.0, 300.0, 100.0, 300.0, 100.0, 300.0, 100.0, 300.0, 100.0, 300.0, 100.0]) == pytest.approx(
        [150, 150, 150, 150, 100 * 3 / (1 + 1 / 3 + 1)])  # images over seconds: the last round holds 3 steps


def test_a_lead_the_rounds_do_not_all_show_keeps_the_default_and_the_tag_says_so(tmp_path, monkeypatch):
    """Faked timings of the four paths (no real timing): compiled contiguous is fastest at its
    median (463 vs 383 img/s) but slower than the default in the last round."""
    steps = {"eager channels_last": [383.0] * 10, "eager contiguous": [380.0] * 10,
             "compiled channels_last": [380.0] * 10, "compiled contiguous": [463.0] * 8 + [300.0] * 2}

    def throughputs(models, recipes, device, n, warmup, strict=False):
        assert n == 10 and len(models) == len(recipes)
        return [steps[str(FastPath(r.train.channels_last, r.train.compile))] for r in recipes]

    monkeypatch.setattr(fast_path, "throughputs", throughputs)
    cfg = open_cfg(tmp_path, "train.epochs=2000", "schedule.milestones=[1000]", "measure.throughput_steps=10")
    settled = settle(cfg, CPU)
    assert settled.path == DEFAULT
    assert settled.tag.endswith("kept eager channels_last: compiled contiguous 463 vs 383 img/s within the rounds' "
                                "spread)")
    assert "img/s, medians of 5 paired rounds" in settled.tag
    steps["compiled contiguous"][-2:] = [463.0, 463.0]  # faster in every round: taken (another store: timed anew)
    taken = settle(open_cfg(tmp_path / "other", "train.epochs=2000", "schedule.milestones=[1000]",
                            "measure.throughput_steps=10"), CPU)
    assert taken.path == FastPath(False, True)
    assert "compiled contiguous beat eager channels_last in every round (its worst 1.21x)" in taken.tag


def test_an_identity_never_holds_the_path(tmp_path):
    keys = {content_key(identity.identity(open_cfg(tmp_path, *o), "data")) for o in (
        [], ["train.channels_last=true", "train.compile=false"], ["train.channels_last=false"],
        ["train.compile=true", "train.compile_backend=eager"])}
    assert len(keys) == 1
    assert identity.identity(open_cfg(tmp_path), "data")["train"]["channels_last"] is True  # format 1's, kept


def test_a_path_the_config_sets_is_taken_without_timing(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_path, "_rates", lambda *a: pytest.fail("timed a path the config set"))
    settled = settle(open_cfg(tmp_path, "train.channels_last=false", "train.compile=false"), CPU)
    assert settled.path == EAGER_CONTIGUOUS and settled.tag == "eager contiguous (the only path open)"
    assert not (tmp_path / "store" / fast_path.FILE).exists()


def test_the_paths_are_timed_once_and_remembered_compile_only_for_a_long_training(tmp_path, monkeypatch):
    timed = []

    def rates(cfg, device, paths, strict):
        timed.append([str(p) for p in paths])
        figures = {"eager channels_last": 1000.0, "eager contiguous": 1200.0, "compiled channels_last": 2000.0,
                   "compiled contiguous": 1900.0}
        return {str(p): [figures[str(p)]] * 3 for p in paths}, 40.0 if any(p.compile for p in paths) else None

    monkeypatch.setattr(fast_path, "_rates", rates)
    short = open_cfg(tmp_path)  # 512 images x 4 epochs: ~2 s at 1000 img/s
    first, again = settle(short, CPU), settle(short, CPU)
    assert timed == [["eager channels_last", "eager contiguous"]]  # the compiled paths are not worth a compile
    assert first.path == again.path == EAGER_CONTIGUOUS
    assert first.tag == ("eager contiguous (timed here: eager channels_last 1000, eager contiguous 1200 img/s, medians "
                         "of 3 paired rounds; compile not tried: ~2 s of training; eager contiguous beat eager "
                         "channels_last in every round (its worst 1.20x))")
    assert again.tag.startswith("eager contiguous (remembered from 20")
    long = open_cfg(tmp_path, "train.epochs=2000", "schedule.milestones=[1000]")  # ~17 min eager: worth trying
    settled = settle(long, CPU)
    assert timed[1:] == [[str(p) for p in candidates(long)]]  # all again, taking turns
    assert settled.path == COMPILED and "a compile 40 s, training ~1024 s" in settled.tag
    book = json.loads((tmp_path / "store" / fast_path.FILE).read_text())
    # the eager entry, and all four timed together (the book's order is its keys')
    assert {len(e["key"]["candidates"]): e["compile_s"] for e in book.values()} == {2: None, 4: 40.0}
    later = settle(short, CPU)  # what the long training timed never changes a short one's path
    assert later.path == first.path and later.figures == first.figures and len(timed) == 2
    again = settle(long, CPU)
    assert again.path == COMPILED and again.how.startswith("remembered from") and len(timed) == 2
    settle(open_cfg(tmp_path, "train.batch_size=16"), CPU)  # another recipe times again
    assert len(timed) == 3


def test_a_config_that_compiles_chooses_the_layout_among_compiled_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_path, "_rates", lambda cfg, d, paths, strict: (
        {str(p): [100.0 + 20 * (not p.channels_last)] * 3 for p in paths}, 30.0))
    settled = settle(open_cfg(tmp_path, "train.compile=true"), CPU)
    assert settled.path == FastPath(False, True) and "compile not tried" not in settled.tag


def test_a_compile_that_fails_here_leaves_the_eager_paths(tmp_path, failing_backend, caplog):
    cfg = open_cfg(tmp_path, f"train.compile_backend={failing_backend}", "train.epochs=4000",
                   "schedule.milestones=[2000]", "measure.throughput_steps=2", "measure.warmup_steps=1")
    with caplog.at_level(logging.WARNING, logger="lottery"):
        settled = settle(cfg, CPU)
    assert settled.path in (DEFAULT, EAGER_CONTIGUOUS)
    assert "compiling fails here: OSError: no C compiler found for Triton" in settled.tag
    assert "compiling fails on this host (OSError: no C compiler found for Triton)" in caplog.text
    assert "compiled" not in settled.figures.split(";")[0]  # no compiled path among the rates


def test_an_unreadable_book_is_timed_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fast_path, "_rates", lambda cfg, d, paths, strict: ({str(p): [100.0] * 3 for p in paths}, None))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / fast_path.FILE).write_text("{torn")
    with caplog.at_level(logging.WARNING, logger="lottery"):
        assert settle(open_cfg(tmp_path), CPU).path == DEFAULT
    assert "unreadable (JSONDecodeError); timing the fast path again" in caplog.text
    assert json.loads((tmp_path / "store" / fast_path.FILE).read_text())


def test_timing_the_paths_for_real_leaves_the_random_state_as_it_was(tmp_path):
    cfg = open_cfg(tmp_path)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    settled = settle(cfg, CPU)
    assert torch.equal(torch.get_rng_state(), before)
    entry = next(iter(json.loads((tmp_path / "store" / fast_path.FILE).read_text()).values()))
    assert set(entry["img_s"]) == {"eager channels_last", "eager contiguous"}
    assert all(len(r) == 3 and min(r) > 0 for r in entry["img_s"].values())  # the smoke profile's 3 steps, a round each
    assert settled.path in (DEFAULT, EAGER_CONTIGUOUS) and settled.how == "timed here"


def test_a_trial_trains_on_the_settled_path_and_tags_it(tmp_path, tracking_uri):
    cfg = open_cfg(tmp_path, "criterion=random", "density=2", f"tracking.uri={tracking_uri}",
                   "tracking.experiment=fast_path", "tracking.log_model=false", "measure.carbon=false",
                   "robustness.enabled=false")
    with restored():
        out = trial.run(cfg)
    tags = mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data.tags
    chosen = tags["fast_path"].split(" (")[0]
    assert chosen in ("eager channels_last", "eager contiguous") and "timed" in tags["fast_path"]
    dense_run = mlflow.MlflowClient(tracking_uri).get_run(tags["dense_run_id"]).data.tags
    assert dense_run["fast_path"] == tags["fast_path"]  # dense and ticket on one path
    assert f"channels_last={chosen.endswith('channels_last')} compile=False" in dense_run["train_conditions"]


def test_out_of_memory_timing_the_candidates_trains_on_the_first_untimed(tmp_path, monkeypatch):
    def rates(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fast_path, "_rates", rates)
    settled = settle(open_cfg(tmp_path), CPU)
    assert settled.path == DEFAULT and "untimed: out of memory" in settled.tag
    assert not (tmp_path / "store" / fast_path.FILE).exists()  # nothing remembered: next time it may fit
