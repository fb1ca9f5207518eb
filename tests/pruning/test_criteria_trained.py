"""The criteria that read trained networks (docs/design.md §3), each checked against what it defines."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lottery import networks
from lottery.networks.cifar_resnet import build
from lottery.pruning.criteria import CRITERIA, ScoringSet, activations, score_blocks
from tests.helpers import kind_config, randomize, resnet_plan


def net(depth=14, seed=0):
    torch.manual_seed(seed)
    return randomize(build(resnet_plan(depth)), seed)  # removable blocks 0, 1, 3, 5


def data(n=40, batch=16):
    g = torch.Generator().manual_seed(1)
    return ScoringSet(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10, batch)


def score(name, model, scoring=None, **kw):
    return score_blocks(name, model, scoring or data(), kind_config(CRITERIA, name, **kw), seed=0)


def test_every_criterion_of_the_paper_is_registered():
    assert set(CRITERIA) >= {"random", "l1", "hrank", "expectabs", "pls", "kl", "snip", "grasp", "synflow"}


def test_kl_of_a_zero_branch_is_zero_and_lowest():
    model = net()
    model.blocks[3].bn2.weight.data.zero_()
    model.blocks[3].bn2.bias.data.zero_()  # residual branch outputs exactly zero
    s = score("kl", model)
    assert s[2] == 0 and (s[[0, 1, 3]] > 1e-6).all()


def test_kl_equals_brute_force_with_the_branch_disabled():
    model, d = net(), data()
    s = score("kl", model, d)
    with torch.no_grad():
        full = F.log_softmax(model(d.x).double(), 1)
        for k, i in enumerate(model.plan.removable):
            with networks.skipping(model, f"blocks.{i}"):  # y = x: what removing the block computes
                dropped = F.log_softmax(model(d.x).double(), 1)
            expected = (full.exp() * (full - dropped)).sum(1).mean()
            torch.testing.assert_close(s[k], expected, rtol=1e-6, atol=1e-9)


def test_hrank_of_feature_maps_of_known_rank():
    g = torch.Generator().manual_seed(0)
    ranks = torch.tensor([[1, 3], [8, 0]])  # (image, channel)
    maps = torch.zeros(2, 2, 8, 8)
    for n in range(2):
        for c in range(2):
            r = int(ranks[n, c])
            maps[n, c] = torch.randn(8, r, generator=g) @ torch.randn(r, 8, generator=g)
    got = activations.feature_map_rank(maps)
    torch.testing.assert_close(got, ranks.double().mean(1) / 8)


def test_expectabs_is_the_mean_absolute_block_output():
    model, d = net(), data(16, 16)
    s = score("expectabs", model, d)
    paths = [f"blocks.{i}" for i in model.plan.removable]
    outs = activations.block_outputs(model.eval(), d.x, paths)
    expected = torch.stack([outs[p].abs().mean().double() for p in paths])
    torch.testing.assert_close(s, expected, rtol=1e-5, atol=0)


def test_vip_finds_the_informative_features_and_has_unit_mean_square():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 4
    x = rng.normal(size=(200, 12))
    x[:, 5] += 3 * labels  # only feature 5 carries the label
    v = activations.vip(x, np.eye(4)[labels], components=3)
    assert v.argmax() == 5
    assert np.mean(v**2) == pytest.approx(1.0)


def test_pls_ranks_highest_the_block_whose_features_carry_the_label(monkeypatch):
    model, d = net(), data(60, 60)

    def fake_outputs(model, x, blocks):
        g = torch.Generator().manual_seed(len(x))
        out = {i: torch.randn(len(x), 16, 4, 4, generator=g) for i in blocks}
        out["blocks.3"] = out["blocks.3"] + 4 * (d.y[: len(x)].float() / 10).view(-1, 1, 1, 1)  # block 3 knows the label
        return out

    monkeypatch.setattr(activations, "block_outputs", fake_outputs)
    s = score("pls", model, d, components=4)
    assert s.argmax() == 2  # removable order: blocks 0, 1, 3, 5


def test_l1_is_the_mean_absolute_conv_weight():
    model = net()
    s = score("l1", model, aggregate="mean")
    b = model.blocks[5]
    expected = torch.cat([b.conv1.weight.flatten(), b.conv2.weight.flatten()]).abs().mean()
    torch.testing.assert_close(s[3], expected.double())


def test_synflow_equals_independent_computation_and_is_data_free():
    model = net()
    s = score("synflow", model, None)
    ref = net().double().eval()
    with torch.no_grad():
        for v in ref.state_dict().values():  # the whole state, BN statistics too, like the reference
            v.abs_()
    ref(torch.ones(1, 3, 32, 32, dtype=torch.float64)).sum().backward()
    b = ref.blocks[1]
    expected = sum((c.weight * c.weight.grad).abs().sum() for c in (b.conv1, b.conv2))
    torch.testing.assert_close(s[1], expected.detach(), rtol=1e-10, atol=0)
    assert not CRITERIA["synflow"].needs_data


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_gives_finite_scores_per_removable_block(name):
    s = score(name, net(20))
    assert s.shape == (7,) and torch.isfinite(s).all()
