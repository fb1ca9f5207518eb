import torch
import torch.nn.functional as F
from torch.func import functional_call

from lottery.networks.cifar_resnet import build
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.pruning.criteria.saliency import hessian_gradient_product
from lottery.pruning.criteria.weights import scored_parameters
from tests.helpers import kind_config, resnet_plan


def tiny():
    torch.manual_seed(0)
    return build(resnet_plan(14))  # two blocks per stage: blocks 0, 1, 3, 5 removable


def scoring(n=20, batch=8):
    g = torch.Generator().manual_seed(1)
    return ScoringSet(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10, batch)


def test_registry_holds_the_core_criteria():
    assert {"random", "snip", "grasp"} <= set(CRITERIA)
    assert not CRITERIA["random"].needs_data and CRITERIA["snip"].needs_data


def test_snip_equals_independent_sum_of_abs_theta_grad():
    model, data, cfg = tiny(), scoring(), kind_config(CRITERIA, "snip")
    scores = score_blocks("snip", model, data, cfg, seed=0)
    # independent: one full-batch backward on a fresh copy in train mode
    ref = tiny().train()
    F.cross_entropy(ref(data.x), data.y).backward()
    expected = []
    for i in ref.plan.removable:
        b = ref.blocks[i]
        expected.append(sum((c.weight * c.weight.grad).abs().sum() for c in (b.conv1, b.conv2)))
    # chunked BN statistics differ from full-batch ones: use one chunk for the exact check
    exact = score_blocks("snip", model, ScoringSet(data.x, data.y, len(data.y)), cfg, seed=0)
    torch.testing.assert_close(exact, torch.stack(expected).double().detach(), rtol=1e-4, atol=1e-8)
    assert scores.shape == (4,) and (scores > 0).all()


def test_grasp_hessian_gradient_product_equals_autograd_hvp():
    model = tiny().double().train()  # float64: the comparison is exact up to rounding
    s = scoring(12, 12)
    data = ScoringSet(s.x.double(), s.y, 12)  # one chunk
    named = scored_parameters(model, "conv")
    names, params = list(named), list(named.values())
    hg = hessian_gradient_product(model, params, data, temperature=200.0)

    def loss_of(*flat):
        out = functional_call(model, dict(zip(names, flat)), (data.x,))
        return F.cross_entropy(out / 200.0, data.y)

    primals = tuple(p.detach() for p in params)
    g = torch.autograd.grad(loss_of(*params), params)
    _, expected = torch.autograd.functional.hvp(loss_of, primals, tuple(x.detach() for x in g))
    for a, b in zip(hg, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert sum(a.abs().sum() for a in hg) > 0


def test_grasp_block_score_is_theta_times_hg_summed():
    model, data = tiny(), ScoringSet(*scoring(12, 12).__dict__.values())
    cfg = kind_config(CRITERIA, "grasp")
    scores = score_blocks("grasp", model, data, cfg, seed=0)
    ref = tiny().train()
    named = scored_parameters(ref, "conv")
    hg = dict(zip(named, hessian_gradient_product(ref, list(named.values()), data, 200.0)))
    expected = [sum((named[k] * hg[k]).sum() for k in named if k.startswith(f"blocks.{i}."))
                for i in ref.plan.removable]
    torch.testing.assert_close(scores, torch.stack(expected).double().detach(), rtol=1e-4, atol=1e-12)


def test_mean_aggregation_and_bn_weights_change_the_score():
    model, data = tiny(), scoring()
    base = score_blocks("snip", model, data, kind_config(CRITERIA, "snip"), 0)
    mean = score_blocks("snip", model, data, kind_config(CRITERIA, "snip", aggregate="mean"), 0)
    with_bn = score_blocks("snip", model, data, kind_config(CRITERIA, "snip", weights="conv_bn"), 0)
    # stage-0 blocks have 2 * 16*16*9 conv weights each
    torch.testing.assert_close(mean[0], base[0] / (2 * 16 * 16 * 9))
    assert (with_bn > base).all()


def test_random_is_seeded_and_scoring_leaves_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = score_blocks("random", model, None, kind_config(CRITERIA, "random"), seed=3)
    b = score_blocks("random", model, None, kind_config(CRITERIA, "random"), seed=3)
    c = score_blocks("random", model, None, kind_config(CRITERIA, "random"), seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    score_blocks("grasp", model, scoring(), kind_config(CRITERIA, "grasp"), 0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_nan_or_infinite_scores_are_a_clear_error_and_remove_nothing(monkeypatch):
    import pytest

    from lottery.errors import LotteryError
    from lottery.pruning import criteria

    model = build(resnet_plan(20))
    bad = torch.tensor([0.5, float("nan"), 0.1, 0.9, 0.2, 0.3, 0.05], dtype=torch.float64)
    monkeypatch.setitem(criteria.CRITERIA._items, "broken", criteria.Criterion("broken", lambda *a: bad, None, False, ""))
    with pytest.raises(LotteryError, match=r"criterion broken gave NaN or infinite scores for blocks \[blocks\.1\]"):
        score_blocks("broken", model, None, kind_config(CRITERIA, "broken"), 0)
    bad[1] = float("inf")
    with pytest.raises(LotteryError, match="nothing was removed"):
        score_blocks("broken", model, None, kind_config(CRITERIA, "broken"), 0)


def test_synflow_takes_the_absolute_value_of_the_whole_state_like_its_reference():
    from torch.func import functional_call as call

    torch.manual_seed(3)
    model = tiny()
    g = torch.Generator().manual_seed(4)
    for m in model.modules():  # trained-looking BatchNorm: negative means, varied variances
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))

    def independent(abs_buffers: bool):
        state = {k: (v.double().abs() if (abs_buffers or k in dict(model.named_parameters())) and v.is_floating_point()
                     else v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        weights = {k: state[k].clone().requires_grad_() for k in scored_parameters(model, "conv")}
        ref = type(model)(model.plan).double().eval()
        out = call(ref, {**state, **weights}, (torch.ones(1, 3, 32, 32, dtype=torch.float64),))
        grads = dict(zip(weights, torch.autograd.grad(out.sum(), list(weights.values()))))
        per_block = []
        for i in model.plan.removable:
            per_block.append(sum((weights[k] * grads[k]).abs().sum() for k in weights if k.startswith(f"blocks.{i}.")))
        return torch.stack(per_block).detach()

    ours = score_blocks("synflow", model, None, kind_config(CRITERIA, "synflow"), 0)
    torch.testing.assert_close(ours, independent(abs_buffers=True), rtol=1e-9, atol=0)
    assert not torch.allclose(ours, independent(abs_buffers=False), rtol=1e-6)  # the buffers matter here
