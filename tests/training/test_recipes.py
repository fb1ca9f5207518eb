"""Each family trains with its field's recipe (docs/design.md §5): the optimizer and schedule each
model config composes, AdamW's weight decay on the weights its papers decay and nothing else, and
the rates the schedules give at known steps."""

import re

import pytest
import torch

from lottery import networks
from lottery.training import data as D
from lottery.training.optimizers import make_optimizer
from lottery.training.optimizers.base import decayed
from lottery.training.recipe import Recipe
from lottery.training.schedules import lr_at
from tests.helpers import compose_cfg, train_config


def recipe_of(*overrides) -> tuple:
    cfg = compose_cfg(*overrides)
    t = cfg.train
    return cfg.optim.name, cfg.schedule.name, t.warmup_epochs, t.warmup_fraction, t.clip_norm


def test_each_family_composes_its_fields_recipe_and_an_override_wins():
    assert recipe_of("model=resnet32") == ("sgd", "step", 0.0, 0.0, None)
    assert recipe_of("model=mobilenet_v2") == ("sgd", "step", 0.0, 0.0, None)
    assert recipe_of("model=hf_causal_lm", "data=synthetic_text") == ("adamw", "cosine", 0.0, 0.1, 1.0)
    for model, warmup in (("deit_tiny", 0.0167), ("vit_tiny", 0.0167), ("convnext_tiny", 0.0667)):
        assert recipe_of(f"model={model}") == ("adamw", "cosine", 0.0, warmup, None), model
    lm = compose_cfg("model=hf_causal_lm", "data=synthetic_text")
    assert list(lm.optim.betas) == [0.9, 0.95] and lm.optim.weight_decay == 0.1 and lm.optim.lr == 3e-3
    assert lm.schedule.floor == 0.1
    deit = compose_cfg("model=deit_tiny", "train.batch_size=128")
    assert Recipe.of(deit).peak_lr == pytest.approx(5e-4 * 128 / 512) and deit.optim.weight_decay == 0.05
    convnext = compose_cfg("model=convnext_tiny", "train.batch_size=128")
    assert Recipe.of(convnext).peak_lr == pytest.approx(Recipe.of(deit).peak_lr)  # 4e-3 per 4096 is DeiT's rate
    # the recipe is the optimizer file's: another optimizer takes none of its warm-up, clipping or rate
    assert recipe_of("model=hf_causal_lm", "data=synthetic_text", "optim=sgd", "schedule=step") == (
        "sgd", "step", 0.0, 0.0, None)
    assert recipe_of("model=vit_tiny", "optim=sgd", "schedule=step") == recipe_of("model=resnet32")
    assert compose_cfg("profile=smoke", "model=mobilenet_v2").optim.lr == 0.05  # the smoke budget's SGD rate
    assert compose_cfg("profile=smoke", "model=mobilenet_v2", "optim=adamw").optim.lr == 1e-3  # not AdamW's
    # a profile changes the budget, not the recipe: the step schedule keeps its shape
    assert [list(compose_cfg(f"profile={p}").schedule.milestones) for p in ("paper", "quick", "smoke")] == [
        [100, 150], [4, 6], [2, 3]]
    digits = compose_cfg("profile=quick", "data=digits")  # the whole splits, to the dense network's plateau
    assert (digits.data.train_size, digits.train.epochs, list(digits.schedule.milestones)) == (None, 30, [15, 22])


def names_of(*overrides):
    cfg = compose_cfg(*overrides)
    model = networks.build(cfg.model, D.shape_of(cfg.data))
    return model, [n for n, _ in model.named_parameters()]


# What each architecture's papers decay, by parameter name (read from the architectures, not from
# module types): the weights of convolutions and linear maps.
DECAYED = {
    "llama": (("model=hf_causal_lm", "data=synthetic_text"), r"(q|k|v|o|gate|up|down)_proj\.weight$|lm_head\.weight$"),
    "gpt2 (head tied to wte)": (("model=hf_causal_lm", "data=synthetic_text", "model.arch=gpt2"),
                                r"c_(attn|proj|fc)\.weight$"),
    "vit": (("model=vit_tiny",), r"conv_proj\.weight$|in_proj_weight$|out_proj\.weight$|mlp\.\d\.weight$|"
                                 r"heads\.head\.weight$"),
    "convnext": (("model=convnext_tiny",), r"features\.0\.0\.weight$|block\.[035]\.weight$|features\.[246]\.1\.weight$|"
                                           r"classifier\.2\.weight$"),
}


@pytest.mark.parametrize("case", list(DECAYED))
def test_adamw_decays_the_weights_of_convolutions_and_linear_maps_only(case):
    overrides, pattern = DECAYED[case]
    model, names = names_of(*overrides)
    expected = {n for n in names if re.search(pattern, n)}
    assert decayed(model) == expected
    kept = set(names) - expected
    assert expected and kept
    opt = make_optimizer(model, Recipe.of(compose_cfg(*overrides, "optim=adamw")))
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    params = dict(model.named_parameters())
    assert by_decay == {0.05: {id(params[n]) for n in expected}, 0.0: {id(params[n]) for n in kept}}


def test_sgd_decays_every_parameter_in_one_group_as_the_paper_does():
    model, names = names_of("model=resnet20")
    opt = make_optimizer(model, Recipe.of(compose_cfg("model=resnet20")))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert len(opt.param_groups[0]["params"]) == len(names)


def test_the_cosine_schedule_at_known_steps():
    r = train_config(optim="adamw", schedule="cosine", lr=1e-3, epochs=10)
    assert [lr_at(r, e) for e in (0, 5, 10)] == pytest.approx([1e-3, 5e-4, 0.0])
    assert lr_at(r, 2, 2, 4) == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.25)).item()))
    floored = train_config(optim="adamw", schedule="cosine", lr=1e-3, epochs=10, floor=0.1)
    assert lr_at(floored, 5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5)) and lr_at(floored, 10) == pytest.approx(1e-4)
    # warm-up over a fifth of the schedule (2 epochs of 4 steps), the decay from where it ends
    warm = train_config(optim="adamw", schedule="cosine", lr=1e-3, epochs=10, warmup_fraction=0.2)
    assert lr_at(warm, 0, 1, 4) == lr_at(train_config(optim="adamw", schedule="cosine", lr=1e-3, epochs=10,
                                                      warmup_epochs=2), 0, 1, 4)
    assert [lr_at(warm, 0, k, 4) for k in range(4)] == pytest.approx([1.25e-4, 2.5e-4, 3.75e-4, 5e-4])
    assert [lr_at(warm, e) for e in (2, 6, 10)] == pytest.approx([1e-3, 5e-4, 0.0])


def test_the_step_schedule_multiplies_at_its_milestones_and_the_warm_up_scales_it():
    r = train_config(epochs=8, warmup_epochs=1)
    assert list(r.schedule.milestones) == [4, 6]
    assert [lr_at(r, e) for e in range(8)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert [lr_at(r, 0, k, 4) for k in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
