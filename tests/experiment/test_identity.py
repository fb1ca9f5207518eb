"""A trial's identity lasts: the keys of format 1 stay what they were (the dense store keys on
them: days of GPU training), whatever moves in the code; a key declared since enters only when set
(docs/design.md §10)."""

import dataclasses

import pytest

from lottery.config import Registry
from lottery.experiment import identity
from lottery.files import content_key
from lottery.training.data import fingerprint
from tests.helpers import compose_cfg

# (overrides, precision, cell_key, config_key, dense store key), computed by the code of format 1. The smoke
# profile warms up since (train.warmup_epochs=1) and sizes vit_tiny's work (conf/sizing/), and ViTs and ConvNeXt
# train with AdamW + cosine since (optim=, schedule=; train.lr is optim.lr): those cases give the values they had
# then.
KNOWN = [
    ('profile=smoke data=synthetic model=resnet32 criterion=grasp density=2 train.warmup_epochs=0', 'fp32', '7d4e01194fd7cab0', '0b82610f62739588', '9c9f444491e9607f'),
    ('profile=smoke data=synthetic model=resnet32 criterion=grasp density=2 train.warmup_epochs=0', 'bf16', '7d4e01194fd7cab0', 'd94cb716704bb94f', 'b639bdb431f8659b'),
    ('profile=smoke data=synthetic model=resnet20 criterion=snip density=1 train.warmup_epochs=0', 'fp32', '17ddf7974bc27113', 'b6da864d9d7735c1', 'f1a8a93d1bcf664c'),
    ('profile=smoke data=synthetic model=resnet20 criterion=snip density=1 train.warmup_epochs=0', 'bf16', '17ddf7974bc27113', '6d014aff7d01008d', '0bde90386b0553d2'),
    ('profile=quick data=synthetic model=resnet56 criterion=pls mode=rewind rewind_epoch=0.25', 'fp32', '55afa8374a5eda0e', 'ce15283d4b34aa3e', 'de7c71521b1a3d3a'),
    ('profile=quick data=synthetic model=resnet56 criterion=pls mode=rewind rewind_epoch=0.25', 'bf16', '55afa8374a5eda0e', 'c270393fc52eedb2', '71373b1c06375f7f'),
    ('profile=paper data=cifar10 model=resnet32 criterion=kl mode=lr_rewind rewind_epoch=25', 'fp32', 'a780fd5888dfd3e3', 'f268b95ae28a71c7', '15e9455c6a64bb32'),
    ('profile=paper data=cifar10 model=resnet32 criterion=kl mode=lr_rewind rewind_epoch=25', 'bf16', 'a780fd5888dfd3e3', 'f20b3700a6a691c4', '9381d18bc5bf8154'),
    ('profile=smoke data=synthetic model=resnet18 criterion=synflow structure=filter train.warmup_epochs=0', 'fp32', 'b9ba543af3b20b41', '371b65b760f1d02f', 'b262e66425f204c4'),
    ('profile=smoke data=synthetic model=resnet18 criterion=synflow structure=filter train.warmup_epochs=0', 'bf16', 'b9ba543af3b20b41', 'c928e9d466cf0925', 'a61f67ee1eeca348'),
    ('profile=smoke data=synthetic model=vit_tiny optim=sgd schedule=step criterion=grasp criterion.temperature=100 optim.lr=0.1 data.train_size=512 criterion.scoring_size=100 criterion.batch_size=100 measure.latency_repeats=5 train.warmup_epochs=0', 'fp32', 'd2920dad938b9e8f', '91c9f550f5fc6176', 'd7b8749037e9ae43'),
    ('profile=smoke data=synthetic model=vit_tiny optim=sgd schedule=step criterion=grasp criterion.temperature=100 optim.lr=0.1 data.train_size=512 criterion.scoring_size=100 criterion.batch_size=100 measure.latency_repeats=5 train.warmup_epochs=0', 'bf16', 'd2920dad938b9e8f', '59b072d44cc3a169', '26c17f35eedc72c3'),
    ('profile=smoke data=synthetic model=mobilenet_v2 criterion=l1 prune.rounds=0 density=2 train.warmup_epochs=0 optim.lr=0.1', 'fp32', '1eaf9702565a0df6', 'aa5966fb6a506d8c', 'eaaa455d2e5d8b34'),
    ('profile=smoke data=synthetic model=mobilenet_v2 criterion=l1 prune.rounds=0 density=2 train.warmup_epochs=0 optim.lr=0.1', 'bf16', '1eaf9702565a0df6', 'c6f025513ea5ebf3', '330667926c106ad0'),
    ('profile=smoke data=synthetic model=convnext_tiny optim=sgd schedule=step criterion=random mode=reinit train.warmup_epochs=0', 'fp32', 'aca217ed641d0252', '828cbbfba31fc96d', '35902ebbaa9dec33'),
    ('profile=smoke data=synthetic model=convnext_tiny optim=sgd schedule=step criterion=random mode=reinit train.warmup_epochs=0', 'bf16', 'aca217ed641d0252', 'aa413d76117aa37d', 'f42d03a089933f8e'),
    ('profile=smoke data=synthetic model=resnet20 criterion=grasp structure=joint density=2 train.amp=off train.warmup_epochs=0', 'fp32', '133095917c3e3e31', '0f21357b8b8c19a3', 'f1a8a93d1bcf664c'),
    ('profile=smoke data=synthetic model=resnet20 criterion=grasp structure=joint density=2 train.amp=off train.warmup_epochs=0', 'bf16', '133095917c3e3e31', '6b291dfe1c1379de', '0bde90386b0553d2'),
]


@pytest.mark.parametrize("overrides,precision,cell,config,dense", KNOWN)
def test_the_keys_of_format_1_never_change(overrides, precision, cell, config, dense):
    cfg = compose_cfg(*overrides.split())
    data = fingerprint(cfg.data)
    assert identity.trial_keys(cfg, data, precision) == {"cell_key": cell, "config_key": config}
    assert content_key(identity.dense_spec(cfg, data, precision)) == dense


def test_a_kind_that_declares_a_key_of_format_1_declares_it_with_its_format_1_default():
    for registry in Registry.every:
        for name, settings in registry.settings.items():
            for f in dataclasses.fields(settings):
                path = f"{registry.group}.{f.name}"
                if path in identity.FORMAT1:
                    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                    assert getattr(default, "value", default) == identity.FORMAT1[path], (name, path)


def test_the_default_optimizer_and_schedule_hold_format_1s_recipe_under_its_keys():
    """Format 1's SGD and step keys moved to optim= and schedule=: the default kinds give their
    format-1 values (the milestones as epochs of the paper's 200), named by their format-1 paths."""
    spec = identity.identity(compose_cfg(), "d")
    moved = identity.MOVED.values()
    assert {old: spec["train"][old.split(".")[1]] for old in moved} == {old: identity.FORMAT1[old] for old in moved}
    assert "optim" not in spec and "schedule" not in spec  # sgd and step: the format-1 recipe, nothing added


def test_a_key_declared_after_format_1_enters_the_identity_only_when_set(monkeypatch):
    later = {k: v for k, v in identity.FORMAT1.items() if k != "xi"}  # as if xi had come later
    monkeypatch.setattr(identity, "FORMAT1", later)
    at_default = identity.identity(compose_cfg("profile=smoke", "data=synthetic"), "d")
    set_away = identity.identity(compose_cfg("profile=smoke", "data=synthetic", "xi=0.5"), "d")
    assert "xi" not in at_default and set_away["xi"] == 0.5
