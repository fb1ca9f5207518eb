"""The structured-LTH baseline: filter tickets matched to the layer ticket's filter count."""

import pytest
import torch

from lottery import networks
from lottery.errors import LotteryError
from lottery.experiment.design import validate
from lottery.networks import count_filters
from lottery.networks.cifar_resnet import build, remove_filters
from lottery.pruning.criteria import CRITERIA, ScoringSet
from lottery.pruning.selection import filter_floor, select_filters
from lottery.pruning.structures import Request
from lottery.pruning.structures import filter as filter_structure
from tests.helpers import compose_cfg, kind_config, randomize, resnet_plan


def scoring():
    g = torch.Generator().manual_seed(0)
    return ScoringSet(torch.randn(40, 3, 32, 32, generator=g), torch.arange(40) % 10, 40)


def request(cfg, model, count=None):
    return Request(cfg, cfg.density if count is None else count, model, scoring())


def plan_filters(plan) -> int:
    return count_filters(build(plan))


def narrowables(plan):
    return networks.narrowables(build(plan))


@pytest.mark.parametrize("density,filters", [(1, 1200), (2, 1168)])
def test_filter_ticket_matches_the_layer_ticket_count(density, filters):
    # GraSP at initialization removes stage-1 blocks first (as in the paper), 32 filters each
    cfg = compose_cfg("structure=filter", "criterion=grasp", f"density={density}")
    torch.manual_seed(0)
    model = build(resnet_plan(32))
    p = filter_structure.filters(request(cfg, model))
    assert p.record["target_filters"] == filters
    stage = {b.path: b.stage for b in networks.anatomy(model).blocks}
    assert all(stage[path] == 0 for path in p.record["layer_ticket"]["removed"])
    ticket = p.apply(model)
    assert count_filters(ticket) == plan_filters(ticket.plan) == filters
    assert len(ticket.blocks) == 15  # as deep as the dense network: only narrower


@pytest.mark.parametrize("criterion", ["snip", "random", "synflow"])
@pytest.mark.parametrize("target", [1200, 1168, 1001])
def test_an_explicit_target_is_met_exactly(criterion, target):
    cfg = compose_cfg("structure=filter", f"criterion={criterion}", f"target_filters={target}")
    torch.manual_seed(0)
    model = build(resnet_plan(32))
    assert count_filters(filter_structure.filters(request(cfg, model, 1)).apply(model)) == target


def test_narrow_net_equals_wide_net_with_next_conv_inputs_zeroed():
    torch.manual_seed(1)
    model = randomize(build(resnet_plan(20)))
    g = torch.Generator().manual_seed(2)
    keep = {i: sorted(torch.randperm(b.mid_ch, generator=g)[: b.mid_ch // 2 + 1].tolist())
            for i, b in enumerate(model.plan.blocks) if i % 2 == 0}
    narrow = remove_filters(model, keep)
    for i, channels in keep.items():
        dropped = [c for c in range(model.plan.blocks[i].mid_ch) if c not in channels]
        model.blocks[i].conv2.weight.data[:, dropped] = 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), model(x), rtol=1e-5, atol=1e-5)
    assert narrow.blocks[0].conv1.out_channels == len(keep[0]) < model.blocks[0].conv1.out_channels


def test_every_count_down_to_the_floor_is_reachable_globally():
    plan = resnet_plan(20)
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(b.mid_ch, generator=g) for b in plan.blocks]
    convs, total = narrowables(plan), plan_filters(plan)
    floor = filter_floor(total, convs)
    assert floor == plan_filters(plan) - sum(b.mid_ch - 1 for b in plan.blocks)
    for target in (plan_filters(plan), plan_filters(plan) - 37, floor):
        keep = select_filters(convs, scores, total, target)
        assert all(len(k) >= 1 for k in keep.values())
        assert sum(len(k) for k in keep.values()) - sum(b.mid_ch for b in plan.blocks) == target - plan_filters(plan)
    # global: the removed filters are the lowest-scoring ones overall
    keep = list(select_filters(convs, scores, total, plan_filters(plan) - 20).values())
    removed = [float(s[c]) for b, s in enumerate(scores) for c in range(len(s)) if c not in keep[b]]
    kept = [float(s[c]) for b, s in enumerate(scores) for c in keep[b]]
    assert max(removed) <= min(kept)


def test_layerwise_keeps_the_per_layer_fraction():
    plan = resnet_plan(20)
    scores = [torch.rand(b.mid_ch) for b in plan.blocks]
    total_mid = sum(b.mid_ch for b in plan.blocks)
    keep = select_filters(narrowables(plan), scores, plan_filters(plan), plan_filters(plan) - total_mid // 4,
                          scope="layerwise")
    for b, block in enumerate(plan.blocks):
        assert len(keep[f"blocks.{b}.conv1"]) == block.mid_ch * 3 // 4  # a quarter of every convolution's filters


def test_fewer_filters_than_the_floor_is_a_clear_error():
    plan = resnet_plan(32)
    convs, total = narrowables(plan), plan_filters(plan)
    with pytest.raises(LotteryError, match="out of reach"):
        select_filters(convs, [torch.rand(b.mid_ch) for b in plan.blocks], total, filter_floor(total, convs) - 1)
    with pytest.raises(LotteryError, match=r"target_filters=10 is out of reach: resnet32 has 1232 filters"):
        validate(compose_cfg("profile=smoke", "data=synthetic", "structure=filter", "target_filters=10"))


def test_block_only_criteria_are_refused_for_filters():
    with pytest.raises(LotteryError, match="structure=filter needs a criterion that scores filters"):
        validate(compose_cfg("profile=smoke", "data=synthetic", "structure=filter", "criterion=kl"))
    with pytest.raises(LotteryError, match="unknown structure 'channel'"):
        validate(compose_cfg("profile=smoke", "data=synthetic", "structure=channel"))


def test_filter_trial_logs_filters_at_its_target(smoke):
    from lottery.experiment import trial

    out = trial.run(smoke("structure=filter", "mode=init", "criterion=snip", "density=1", "model=resnet32",
                          "data.train_size=128", "measure.enabled=false", "robustness.enabled=false"))
    # the target is the filter count of SNIP's layer ticket: one block of stage 1, 2 or 3 removed
    assert out["filters"] == out["target_filters"] in (1200, 1168, 1104) and out["dense_filters"] == 1232
    assert out["blocks_removed"] == 0 and out["filters_removed"] == 1232 - out["target_filters"]
    assert out["name"] == "init-snip-p1-filter-resnet32-s0"
    from lottery import load_ticket
    from lottery.networks import count_filters

    narrowed = load_ticket(out["run_id"], uri=smoke().tracking.uri)  # the narrower blocks come back from the plan
    assert count_filters(narrowed) == out["filters"]


@pytest.mark.parametrize("criterion", ["snip", "grasp", "random"])
def test_blocks_and_filters_together_equal_each_alone_and_score_once(criterion, monkeypatch):
    from dataclasses import replace

    from lottery.pruning import criteria as C

    cfg, data = kind_config(CRITERIA, criterion), scoring()
    torch.manual_seed(0)
    model = build(resnet_plan(14))
    blocks, filters = C.score_blocks_and_filters(criterion, model, data, cfg, 0)
    torch.testing.assert_close(blocks, C.score_blocks(criterion, model, data, cfg, 0))
    for a, b in zip(filters, C.score_filters(criterion, model, data, cfg, 0)):
        torch.testing.assert_close(a, b)
    crit = C.CRITERIA[criterion]
    if crit.per_weight is not None:
        calls = []
        counting = replace(crit, per_weight=lambda *a: calls.append(1) or crit.per_weight(*a))
        monkeypatch.setitem(C.CRITERIA._items, criterion, counting)
        C.score_blocks_and_filters(criterion, model, data, cfg, 0)
        assert len(calls) == 1
