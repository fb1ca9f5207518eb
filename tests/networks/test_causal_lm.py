"""The language-model family's door and scored weights: only models whose logits at a position
ignore later tokens are accepted (probed, whatever the architecture's name), and a head tied to
the token embedding is not scored, as embeddings never are (docs/design.md §2-§3)."""

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from lottery import networks
from lottery.experiment.design import validate
from lottery.networks.base import Shape
from lottery.networks.hf_causal_lm import CausalLMSettings
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.training.tasks.base import TASKS
from tests.helpers import REPO, compose_cfg, refusal

SHAPE = Shape((16,), 256, "tokens")
LM = ("data=synthetic_text", "model=hf_causal_lm", "model.width=32", "model.layers=2")


def lm(arch, **kw):
    cfg = OmegaConf.structured(CausalLMSettings(family="hf_causal_lm", arch=arch, layers=2, width=32, heads=4,
                                                kwargs=kw))
    torch.manual_seed(0)
    return networks.build(cfg, SHAPE).eval()


def tokens(n=3, seed=0):
    return torch.randint(0, 256, (n, SHAPE.input[0]), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Causality, probed at the door


def test_bert_reads_later_positions_and_is_refused_in_one_line_naming_its_decoder_switch():
    x = tokens(1)
    later = x.clone()
    later[0, 10] = (later[0, 10] + 1) % 256
    with torch.no_grad():  # the premise: transformers builds BERT's causal-LM head bidirectional
        assert not torch.allclose(lm("bert")(x)[0, 0], lm("bert")(later)[0, 0])
        assert torch.allclose(lm("llama")(x)[0, :10], lm("llama")(later)[0, :10], atol=1e-6)
    line = refusal(*LM, "model.arch=bert")
    assert line.startswith("model.arch=bert reads later positions") and "not a causal language model" in line
    assert "++model.kwargs.is_decoder=true" in line
    validate(compose_cfg("profile=smoke", *LM, "model.arch=bert", "++model.kwargs.is_decoder=true"))  # the switch works


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoders_pass_the_probe_and_leave_torchs_rng_as_it_was(arch):
    state = torch.get_rng_state()
    validate(compose_cfg("profile=smoke", *LM, f"model.arch={arch}", "model.heads=2"))  # a config probed afresh
    assert torch.equal(torch.get_rng_state(), state)


def test_the_cli_refuses_bert_with_one_line_and_status_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lottery", "profile=smoke", "model=hf_causal_lm", "model.arch=bert",
                        "data=synthetic_text", "device=cpu", f"paths.root={tmp_path}",
                        f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("lottery: error: model.arch=bert reads later positions")


# --------------------------------------------------------------------------------------------
# Tied weights


def test_gpt2s_head_tied_to_its_token_embedding_is_not_scored():
    model = lm("gpt2")
    embedding = model.lm.get_input_embeddings().weight
    assert model.lm.get_output_embeddings().weight is embedding  # the premise: GPT-2 ties them
    for norms in (False, True):
        scored = networks.scored_weights(model, norms=norms)
        assert all(p is not embedding for p in scored.values()) and "lm.lm_head.weight" not in scored
        assert len({id(p) for p in scored.values()}) == len(scored)  # every parameter once
    untied = networks.scored_weights(lm("llama"), norms=False)
    assert "lm.lm_head.weight" in untied and not any("embed" in k for k in untied)


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_per_weight_criteria_score_a_tied_gpt2_finitely(name):
    x, y = tokens(8), tokens(8, seed=1)
    cfg = OmegaConf.structured(CRITERIA.settings_of(name)(name=name))
    scores = score_blocks(name, lm("gpt2"), ScoringSet(x, y, 4, TASKS["language_modeling"]), cfg, 0)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
