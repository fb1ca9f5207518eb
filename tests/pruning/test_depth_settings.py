"""The depth criteria's settings (docs/design.md §3): each paper's choice by default, the released
code's behind a setting, each changing what is read as an independent computation says; settings
that make a criterion meaningless refused in one line; and a tie refusal's remedy, followed, runs."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lottery import networks
from lottery.config import choice
from lottery.errors import LotteryError
from lottery.experiment.design import validate
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.pruning.selection import select_blocks
from lottery.pruning.structures import Request
from lottery.pruning.structures.layer import layers
from tests.helpers import compose_cfg, refusal
from tests.pruning.test_scores import SMALL_VIT, build, scoring
from tests.test_language_models import LM, lm, tokens


def settings(name, **values):
    return OmegaConf.structured(CRITERIA.settings_of(name)(name=name, **values))


def test_settings_that_make_a_depth_criterion_meaningless_are_one_line_at_the_door():
    assert refusal("criterion=angular_distance", "criterion.span=0").startswith(
        "criterion.span=0: a span holds at least the scored block")
    assert refusal("criterion=angular_distance", "criterion.span=99").startswith(
        "criterion.span=99: longer than the 5 removable blocks of resnet32's longest stage")
    validate(compose_cfg("profile=smoke", "data=synthetic", "criterion=angular_distance", "criterion.span=5"))
    assert "resnet32's blocks output feature maps, whose last pixel means nothing" in refusal(
        "criterion=angular_distance", "criterion.positions=last")
    assert "vit_tiny's blocks output tokens, whose last one means nothing" in refusal(
        "model=vit_tiny", "criterion=angular_distance", "criterion.positions=last")
    assert "reads a language model's final norm" in refusal("criterion=block_influence", "criterion.final_norm=true")
    assert "11 of its 13 can go, not 12" in refusal("criterion=loss_on_removal", "criterion.keep_ends=true", "density=12")


def test_a_language_model_composes_the_last_token_and_an_override_wins():
    lm_ = ("model=hf_causal_lm", "data=synthetic_text", "criterion=angular_distance")
    assert choice(compose_cfg(*lm_).criterion.positions) == "last"
    assert choice(compose_cfg(*lm_, "criterion.positions=all").criterion.positions) == "all"
    assert choice(compose_cfg("criterion=angular_distance").criterion.positions) == "all"


def test_positions_read_the_last_token_or_every_one_as_computed_from_the_layers_outputs():
    model, x = lm(layers=4, seed=3), tokens(6, seed=2)
    with torch.no_grad():
        hidden = model.lm(input_ids=x, output_hidden_states=True).hidden_states  # the last is after the final norm
    for positions, at in (("last", slice(-1, None)), ("all", slice(None))):
        ours = score_blocks("angular_distance", model, ScoringSet(x, x, 3, LM), settings("angular_distance",
                                                                                     positions=positions), 0)
        cos = [F.cosine_similarity(a.double(), b.double(), dim=-1)[:, at] for a, b in zip(hidden[:-1], hidden[1:])]
        expected = torch.stack([torch.arccos(c.clamp(-1, 1)).mean() / torch.pi for c in cos])
        torch.testing.assert_close(ours[:-1], expected[:-1], rtol=1e-9, atol=1e-12)  # the last: before the norm


def test_final_norm_reads_the_last_layer_after_the_final_norm_as_the_hidden_states_do():
    model, x = lm(layers=4, seed=1), tokens(6, seed=4)
    with torch.no_grad():  # a trained norm's scale: at its initial ones an RMS norm turns no direction
        model.lm.model.norm.weight.copy_(torch.rand(32, generator=torch.Generator().manual_seed(0)) + 0.5)
        hidden = model.lm(input_ids=x, output_hidden_states=True).hidden_states
    shortgpt = torch.stack([1 - F.cosine_similarity(a.double(), b.double(), dim=-1).mean()
                            for a, b in zip(hidden[:-1], hidden[1:])])
    data = ScoringSet(x, x, 3, LM)
    after = score_blocks("block_influence", model, data, settings("block_influence", final_norm=True), 0)
    own = score_blocks("block_influence", model, data, settings("block_influence"), 0)
    torch.testing.assert_close(after, shortgpt, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(own[:-1], shortgpt[:-1], rtol=1e-9, atol=1e-12)
    assert abs(float(own[-1] - shortgpt[-1])) > 1e-3  # the paper's last score: the layer's own output


def test_keep_ends_never_lets_the_first_or_last_block_go_as_slebs_code():
    model, x, y = lm(layers=5, seed=2), tokens(6), tokens(6, seed=1)
    data = ScoringSet(x, y, 3, LM)
    every = score_blocks("loss_on_removal", model, data, settings("loss_on_removal"), 0)
    kept = score_blocks("loss_on_removal", model, data, settings("loss_on_removal", keep_ends=True), 0)
    paths = networks.removable_paths(model)
    for k in range(1, len(paths) - 1):  # the middle: the token loss of the network without the layer
        with torch.no_grad():
            out = networks.without(model, [paths[k]])(x).double()
        expected = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        assert float(kept[k]) == pytest.approx(float(expected), rel=1e-9) == float(every[k])
    assert kept[0] == kept[-1] == torch.finfo(torch.float64).max
    anatomy = networks.anatomy(model)
    assert not {paths[0], paths[-1]} & set(select_blocks(anatomy, kept, 3))


@pytest.mark.parametrize("model, refused, remedy", [
    (("model=convnext_tiny",), "block_influence", "snip"),  # layer scale 1e-6: every block nearly the identity
    (SMALL_VIT, "snip", "grasp"),  # a zero classifier: no gradient reaches the blocks but GraSP's Hessian term
])
def test_a_tie_refusal_names_a_criterion_that_tells_the_blocks_apart_and_it_runs(model, refused, remedy):
    cfg, net = build(*model, f"criterion={refused}", "density=2")
    with pytest.raises(LotteryError) as e:
        layers(Request(cfg, 2, net, scoring()))
    assert f"criterion={remedy} (it tells these blocks apart)" in str(e.value) and "\n" not in str(e.value)
    cfg, net = build(*model, f"criterion={remedy}", "density=2")
    assert len(layers(Request(cfg, 2, net, scoring())).record["removed"]) == 2  # followed, it chooses
