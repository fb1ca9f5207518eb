"""Language models end to end: the task's numbers, byte-level text, the Hugging Face decoder family
(surgery, FLOPs, save_pretrained), the criteria defined on tokens, bad input, and whole trials."""

import math

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lottery import networks
from lottery.experiment import trial
from lottery.measure import costs
from lottery.networks.base import Shape
from lottery.networks.hf_causal_lm import CausalLMSettings
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.training.sources import text
from lottery.training.tasks.base import TASKS
from tests.helpers import compose_cfg, refusal

LM = TASKS["language_modeling"]
SHAPE = Shape((16,), 256, "tokens")


def lm(arch="llama", layers=4, seed=0, **kw):
    cfg = OmegaConf.structured(CausalLMSettings(family="hf_causal_lm", arch=arch, layers=layers, width=32, heads=4,
                                                **kw))
    torch.manual_seed(seed)
    return networks.build(cfg, SHAPE).eval()


def tokens(n=3, seed=0):
    return torch.randint(0, 256, (n, SHAPE.input[0]), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# The task's numbers


def test_perplexity_is_exp_of_the_mean_token_loss_on_a_known_case():
    y = tokens(4)
    uniform = torch.zeros(4, 16, 256)  # every symbol equally likely: loss ln 256, perplexity 256
    outcomes = LM.outcome(uniform, y)
    summary = LM.summary(outcomes, y)
    assert summary["loss"] == pytest.approx(math.log(256), rel=1e-12)
    assert summary["perplexity"] == pytest.approx(256, rel=1e-9)
    sure = torch.full((4, 16, 256), -30.0).scatter(2, y[..., None], 30.0)  # the right token, nearly surely
    out = LM.outcome(sure, y)
    assert LM.accuracy(out, y) == 100.0 and LM.summary(out, y)["perplexity"] == pytest.approx(1.0, abs=1e-12)
    half = sure.clone()
    half[:2] = 0  # two sequences uniform: half the tokens' argmax is symbol 0
    assert LM.accuracy(LM.outcome(half, y), y) == pytest.approx(100 * (2 * 16 + int((y[:2] == 0).sum())) / 64)


def test_the_paired_lm_statistic_finds_no_difference_in_identical_predictions_and_one_in_worse():
    y = tokens(50)
    logits = torch.randn(50, 16, 256, generator=torch.Generator().manual_seed(1))
    same = LM.outcome(logits, y)
    paired = LM.paired(same, same.clone(), y)
    assert paired["p_value"] == 1.0 and paired["loss_delta"] == 0.0
    assert paired["loss_delta_ci_low"] == paired["loss_delta_ci_high"] == 0.0
    worse = LM.paired(LM.outcome(logits * 3, y), same, y)  # sharper random logits: a higher loss on every sequence
    assert worse["loss_delta"] > 0 and worse["loss_p_value"] < 1e-6 and worse["loss_delta_ci_low"] > 0
    assert worse["p_value"] == 1.0  # ... and the same predicted tokens: no accuracy difference
    right = same.clone()
    right[:, 1] += torch.arange(50).remainder(3).double()  # 0-2 more right tokens per sequence
    assert LM.paired(right, same, y)["p_value"] < 1e-6
    one = LM.paired(right[:1] + 1, same[:1], y[:1])  # one sequence: no evidence, no interval
    assert one["p_value"] == 1.0 and "loss_delta_ci_low" not in one


def test_the_classification_task_keeps_mcnemar():
    y = torch.tensor([0, 1, 2, 3])
    out = TASKS["classification"].paired(torch.tensor([0, 1, 0, 0]), torch.tensor([0, 0, 0, 3]), y)
    assert out["ticket_only_correct"] == 1 and out["dense_only_correct"] == 1
    assert out["p_value"] == out["mcnemar_p"] == 1.0


# --------------------------------------------------------------------------------------------
# Byte-level text


def test_byte_level_windows_round_trip_and_hold_out_whole_documents():
    documents = [f"Document {i}: the quick brown fox jumps over the lazy dog, naïvely.".encode() * 3 for i in range(30)]
    train, test = text.held_out(documents, 0.2)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 30 and test
    assert sum(map(len, test)) >= 0.2 * sum(map(len, documents))
    w = text.windows(train, 15)
    assert w.shape[1] == 16 and w.dtype == np.uint8
    joined = text.SEPARATOR.join(train)
    assert bytes(w.reshape(-1)) == joined[:w.size]  # the windows are the text, byte for byte
    assert joined[:w.size].decode("utf-8", errors="strict").startswith("Document")
    x, y = LM.tensors(w, np.arange(len(w)), torch.device("cpu"))
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], torch.from_numpy(w[:, -1]).long())


def test_a_text_folder_loads_as_sequences_of_next_token_predictions(tmp_path):
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Paragraph {i} of plain English text. " * 20)
    (tmp_path / "skip.bin").write_bytes(b"\x00" * 5000)
    cfg = compose_cfg("profile=smoke", "data=text", f"data.root={tmp_path}", "data.seq_len=32",
                      "model=hf_causal_lm", "data.train_size=40")
    from lottery.training.data import load_dataset

    d = load_dataset(cfg.data, torch.device("cpu"))
    assert d.task is LM and d.shape == Shape((32,), 256, "tokens") and len(d.train) == 40
    assert d.train.x.dtype == torch.uint8 and torch.equal(d.train.x[:, 1:], d.train.y[:, :-1])  # bytes stay bytes
    assert int(d.train.x.max()) < 128  # the .bin file was not read
    assert d.normalize(d.train.x[:2]) is not None and torch.equal(d.normalize(d.train.x[:2]), d.train.x[:2])


# --------------------------------------------------------------------------------------------
# The family


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_decoder_without_layers_equals_the_original_with_them_skipped(arch):
    dense = lm(arch)
    paths = [b.path for b in networks.anatomy(dense).blocks]
    assert len(paths) == 4 and all(b.removable for b in networks.anatomy(dense).blocks)
    assert networks.anatomy(dense).layout == "tokens" and networks.anatomy(dense).max_removable == 3
    x = tokens()
    ticket = networks.without(dense, [paths[1], paths[2]])
    with torch.no_grad(), networks.skipping(dense, paths[1]), networks.skipping(dense, paths[2]):
        skipped = dense(x)
    assert ticket.lm.config.get_text_config().num_hidden_layers == 2
    assert torch.allclose(ticket(x), skipped, atol=1e-5)
    assert networks.record(ticket)["removed"] == [1, 2] and networks.record(ticket)["kept"] == [0, 3]
    # a second removal from the ticket names the dense network's layers in its record
    again = networks.without(ticket, [networks.anatomy(ticket).blocks[1].path])
    assert networks.record(again)["removed"] == [1, 2, 3]
    rebuilt = networks.rebuild(networks.record(ticket))
    rebuilt.load_state_dict(ticket.state_dict())
    assert torch.equal(rebuilt.eval()(x), ticket(x))


def test_the_tickets_flops_are_the_dense_flops_less_the_removed_layers():
    dense = lm()
    paths = [b.path for b in networks.anatomy(dense).blocks]
    per_module = costs.counted(dense).get_flop_counts()
    layer_flops = {p: sum(per_module[f"CausalLM.{p}"].values()) for p in paths}
    assert len(set(layer_flops.values())) == 1 and layer_flops[paths[0]] > 0  # equal layers, each counted
    ticket = networks.without(dense, [paths[0], paths[2]])
    assert costs.flops(ticket) == costs.flops(dense) - layer_flops[paths[0]] - layer_flops[paths[2]]


def test_a_ticket_saved_with_save_pretrained_loads_as_an_ordinary_transformers_model(tmp_path):
    from transformers import AutoModelForCausalLM

    dense = lm("gpt2")
    ticket = networks.without(dense, [networks.anatomy(dense).blocks[2].path])
    ticket.lm.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens()
    assert loaded.config.n_layer == 3
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, ticket(x), atol=1e-6)


def test_a_local_checkpoint_starts_the_dense_network(tmp_path):
    source = lm(seed=5)
    source.lm.save_pretrained(tmp_path / "ckpt")
    cfg = OmegaConf.structured(CausalLMSettings(family="hf_causal_lm", pretrained=str(tmp_path / "ckpt")))
    networks.check(cfg, SHAPE)
    torch.manual_seed(0)
    started = networks.build(cfg, SHAPE).eval()
    assert torch.equal(started(tokens()), source(tokens()))
    assert networks.family("hf_causal_lm").content(cfg) != networks.family("hf_causal_lm").content(
        OmegaConf.structured(CausalLMSettings(family="hf_causal_lm")))


# --------------------------------------------------------------------------------------------
# Criteria on tokens


TOKEN_CRITERIA = ["snip", "grasp", "synflow", "random", "kl", "block_influence", "angular_distance", "loss_on_removal"]


@pytest.mark.parametrize("name", TOKEN_CRITERIA)
def test_every_criterion_defined_on_tokens_scores_every_decoder_layer(name):
    model = lm()
    x, y = tokens(8), tokens(8, seed=1)
    cfg = OmegaConf.structured(CRITERIA.settings_of(name)(name=name))
    scores = score_blocks(name, model, ScoringSet(x, y, 4, LM), cfg, 0)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert len(set(scores.tolist())) == 4 or name == "random"


def test_loss_on_removal_is_the_token_loss_of_the_network_without_the_layer():
    model = lm()
    x, y = tokens(8), tokens(8, seed=1)
    cfg = OmegaConf.structured(CRITERIA.settings_of("loss_on_removal")(name="loss_on_removal"))
    scores = score_blocks("loss_on_removal", model, ScoringSet(x, y, 4, LM), cfg, 0)
    path = networks.anatomy(model).blocks[1].path
    without = networks.without(model, [path])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(without(x).double().reshape(-1, 256), y.reshape(-1))
    assert float(scores[1]) == pytest.approx(float(expected), rel=1e-6)


def test_synflow_on_a_language_model_starts_after_the_embedding():
    model = lm()
    x = networks.ones_input(model, torch.float64)
    assert x.shape == (1, 16, 32) and x.dtype == torch.float64
    cfg = OmegaConf.structured(CRITERIA.settings_of("synflow")(name="synflow"))
    scores = score_blocks("synflow", model, None, cfg, 0)
    assert (scores > 0).all()


# --------------------------------------------------------------------------------------------
# Bad input: one line at the door


def test_bad_language_model_input_is_one_line_at_the_door(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("One paragraph.\n\nAnother one.")
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        (two / f"{i}.txt").write_text("Some words. " * 400)
    lm_ = ("model=hf_causal_lm", "model.width=32", "model.layers=4")
    assert "holds 0 document" in refusal("data=text", f"data.root={tmp_path / 'empty.txt'}", *lm_)
    assert "too short for one sequence" in refusal("data=text", f"data.root={tmp_path / 'short.txt'}", *lm_)
    assert "no files matching data.include=*.md" in refusal("data=text", f"data.root={two}", "data.include=*.md", *lm_)
    assert "exceed the model's position limit of 64" in refusal("data=text", f"data.root={two}", "data.seq_len=100",
                                                                "model.max_positions=64", "data.test_size=1",
                                                                "data.train_size=4", *lm_)
    assert "reads images, and this data is tokens" in refusal("data=synthetic_text", "model=resnet20")
    assert "reads tokens, and this data is images" in refusal(*lm_)
    assert "not a transformers checkpoint folder" in refusal("data=synthetic_text", *lm_,
                                                             f"model.pretrained={tmp_path}")
    assert "is not a transformers model type with a causal-LM head" in refusal("data=synthetic_text", *lm_,
                                                                                "model.arch=lama")
    assert "maximum of 3 blocks" in refusal("data=synthetic_text", *lm_, "density=4")  # every layer: refused
    for name in ("hrank", "pls", "expectabs", "l1"):
        assert "not for language_modeling" in refusal("data=synthetic_text", *lm_, f"criterion={name}")


# --------------------------------------------------------------------------------------------
# Whole trials


@pytest.fixture(scope="module")
def lm_trial(tmp_path_factory, tracking_uri):
    root = tmp_path_factory.mktemp("lm")

    def make(*overrides):
        return compose_cfg("profile=smoke", "data=synthetic_text", "model=hf_causal_lm", f"paths.root={root}",
                           f"tracking.uri={tracking_uri}", "tracking.experiment=lm", "measure.carbon=false",
                           *overrides)

    return make


def test_language_model_trials_finish_and_log_at_init_and_rewound(lm_trial, tmp_path):
    cfg = lm_trial("criterion=block_influence", "density=2")
    out = trial.run(cfg)
    assert out["blocks_removed"] == 2 and out["flops"] < out["dense_flops"]
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"])) and out["dense_perplexity"] > 1
    assert out["perplexity_ratio"] == pytest.approx(out["perplexity"] / out["dense_perplexity"])
    assert 0 <= out["p_value"] <= 1 and out["loss_delta_ci_low"] <= out["loss_delta"] <= out["loss_delta_ci_high"]
    assert out["dense_accuracy"] > 100 / 256 + 10, out  # the dense LM learned the generated language
    assert "mcnemar_p" not in out and out["cifar10c_accuracy"] is None  # images only
    rewound = trial.run(lm_trial("criterion=snip", "mode=rewind", "rewind_epoch=1", "density=2"))
    assert rewound["ticket_epochs"] == 3 and rewound["dense_accuracy"] == out["dense_accuracy"]
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.get_run(rewound["run_id"])
    assert run.data.tags["cifar10c_source"] == "not defined for language_modeling"
    # the logged ticket: rebuilt by lottery.load_ticket, and an ordinary transformers model
    from transformers import AutoModelForCausalLM

    import lottery

    ticket = lottery.load_ticket(rewound["run_id"], uri=cfg.tracking.uri)
    assert ticket.lm.config.num_hidden_layers == 4
    ticket.lm.save_pretrained(tmp_path / "ticket")
    x = tokens(2)
    with torch.no_grad():
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(tmp_path / "ticket").eval()(input_ids=x).logits,
                              ticket(x), atol=1e-6)


@pytest.mark.parametrize("positions", ["last", "all"])
def test_angular_distances_equal_short_transformers_on_a_transformers_model(positions):
    """The peer check: Gromov et al.'s angular distance as short-transformers computes it (its
    distance functions, per example, on the same layer inputs and outputs, averaged), to 1e-6."""
    from short_transformers.dist import angular_distance_all_tokens, angular_distance_last_token

    model = lm(layers=4, seed=3)
    x = tokens(6, seed=2)
    cfg = OmegaConf.structured(CRITERIA.settings_of("angular_distance")(name="angular_distance",
                                                                        positions=positions))
    ours = score_blocks("angular_distance", model, ScoringSet(x, x, 3, LM), cfg, 0)
    paths = [b.path for b in networks.anatomy(model).blocks]
    distance = angular_distance_last_token if positions == "last" else angular_distance_all_tokens
    peer = []
    for path in paths:
        per_example = []
        for example in x.split(1):
            (inputs, outputs), = networks.block_ends(model, example, [path]).values()
            per_example.append(distance(inputs.float(), outputs.float()))
        peer.append(float(np.mean(per_example)))
    assert ours.tolist() == pytest.approx(peer, abs=1e-6)
    assert len(set(peer)) == 4


def test_hf_text_reads_local_files_through_datasets_and_says_when_there_is_no_hub(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from lottery.experiment.design import validate
    from lottery.training.data import load_dataset

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i} of a small corpus of plain text." for i in range(300)) + "\n")
    cfg = compose_cfg("profile=smoke", "data=hf_text", "data.dataset=text", f"data.data_files=[{corpus}]",
                      "data.subset=null", "data.seq_len=32", "data.train_size=50", "data.test_size=5",
                      f"data.cache={tmp_path / 'cache'}", "model=hf_causal_lm", "model.width=32",
                      "criterion.scoring_size=20")
    validate(cfg)
    d = load_dataset(cfg.data, torch.device("cpu"))
    assert len(d.train) == 50 and len(d.test) == 5 and d.task is LM
    text_bytes = bytes(d.train.x[0].tolist())
    assert b"of a small corpus" in text_bytes or b"Line" in text_bytes  # rows of the file, byte for byte
    text.hub_commit.cache_clear()

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "dataset_info", offline)
    assert "cannot reach the Hugging Face hub" in refusal("data=hf_text", "model=hf_causal_lm")
    text.hub_commit.cache_clear()


def test_model_settings_transformers_rejects_or_layer_indexed_configs_are_one_line():
    lm_ = ("data=synthetic_text", "model=hf_causal_lm", "model.width=32", "model.layers=4")
    assert "model.kwargs" in refusal(*lm_, "++model.kwargs.rope_theta=abc")  # one line, not a traceback
    assert "scale_attn_by_inverse_layer_idx" in refusal(*lm_, "model.arch=gpt2",
                                                        "++model.kwargs.scale_attn_by_inverse_layer_idx=true")
    moe_every_other_layer = ("model.arch=qwen2_moe", "++model.kwargs.decoder_sparse_step=2",
                             "++model.kwargs.num_experts=2", "++model.kwargs.num_experts_per_tok=1",
                             "++model.kwargs.moe_intermediate_size=16",
                             "++model.kwargs.shared_expert_intermediate_size=16")
    assert "decoder layers differ in their weights" in refusal(*lm_, *moe_every_other_layer)


def test_grouped_query_archs_and_dropout_free_defaults_build():
    for arch in ("qwen2", "mistral"):
        model = lm(arch)
        paths = [b.path for b in networks.anatomy(model).blocks]
        with torch.no_grad(), networks.skipping(model, paths[2]):
            skipped = model(tokens())
        assert torch.allclose(networks.without(model, [paths[2]])(tokens()), skipped, atol=1e-5)
    gpt2 = lm("gpt2").train()
    assert gpt2.lm.config.resid_pdrop == gpt2.lm.config.embd_pdrop == gpt2.lm.config.attn_pdrop == 0.0
    assert torch.equal(gpt2(tokens()), gpt2(tokens()))  # no dropout: training steps are reproducible
