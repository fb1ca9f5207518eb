import contextlib

import pytest
import torch

from lottery import networks
from lottery.errors import LotteryError
from lottery.networks import count_filters, count_params
from lottery.networks.cifar_resnet import build, remove_blocks
from lottery.pruning.selection import select_blocks
from tests.helpers import randomize, resnet_plan


def test_filter_counts_match_the_paper():
    model = build(resnet_plan(32, "B"))
    assert count_filters(model) == 1232
    first_stage = [i for i in model.plan.removable if model.plan.blocks[i].stage == 0]
    assert count_filters(remove_blocks(model, first_stage[:1])) == 1200
    assert count_filters(remove_blocks(model, first_stage[:2])) == 1168


@pytest.mark.parametrize("depth,removable,maximum", [(20, 7, 6), (32, 13, 12), (56, 25, 24), (110, 52, 51)])
def test_removable_blocks_and_maximum_density(depth, removable, maximum):
    plan = resnet_plan(depth)
    anatomy = networks.anatomy(build(plan))
    assert len(plan.removable) == len(anatomy.removable) == removable
    assert anatomy.max_removable == maximum
    assert all(plan.blocks[i].stride == 1 for i in plan.removable)
    assert [b.path for b in anatomy.removable] == [f"blocks.{i}" for i in plan.removable]


@pytest.mark.parametrize("shortcut,params", [("A", 464_154), ("B", 466_906)])
def test_parameter_counts(shortcut, params):
    # Option A's 464,154 is He et al.'s "0.46M" as counted by public reproductions.
    assert count_params(build(resnet_plan(32, shortcut))) == params


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_shortened_net_equals_original_with_branches_disabled(shortcut):
    torch.manual_seed(0)
    model = randomize(build(resnet_plan(32, shortcut)))
    removed = [0, 3, 7, 12]
    x = torch.randn(4, 3, 32, 32)
    ticket = remove_blocks(model, removed)
    with contextlib.ExitStack() as skipped, torch.no_grad():  # each removed block passes its input on
        for i in removed:
            skipped.enter_context(networks.skipping(model, f"blocks.{i}"))
        expected, got = model(x), ticket(x)
    assert len(ticket.blocks) == len(model.blocks) - len(removed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and disabling really changes the output (the test can fail)
    with torch.no_grad():
        assert not torch.allclose(model(x), expected, atol=1e-3)


def test_surgery_copies_parameters_and_buffers():
    model = randomize(build(resnet_plan(20)))
    ticket = remove_blocks(model, [1])
    torch.testing.assert_close(ticket.blocks[1].bn1.running_var, model.blocks[2].bn1.running_var)
    torch.testing.assert_close(ticket.blocks[1].conv2.weight, model.blocks[2].conv2.weight)
    ticket.blocks[1].conv2.weight.data.zero_()  # a copy, not shared storage
    assert model.blocks[2].conv2.weight.abs().sum() > 0


def test_surgery_refuses_downsampling_blocks():
    model = build(resnet_plan(20))
    with pytest.raises(ValueError, match="cannot be removed"):
        remove_blocks(model, [3])


def test_selection_takes_lowest_scores_and_keeps_every_stage():
    # removable: stage 0 -> blocks 0..4, stage 1 -> 6..9, stage 2 -> 11..14
    anatomy = networks.anatomy(build(resnet_plan(32)))
    scores = torch.arange(13, dtype=torch.float64)  # stage-0 blocks score lowest
    assert select_blocks(anatomy, scores, 3) == ["blocks.0", "blocks.1", "blocks.2"]
    # all five stage-0 blocks are the lowest, but one must stay: the sixth pick is block 6
    assert select_blocks(anatomy, scores, 5) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.6"]
    with pytest.raises(LotteryError, match="at most 12"):
        select_blocks(anatomy, scores, 13)


def test_a_family_missing_part_of_the_contract_cannot_register():
    class Partial(networks.Family):  # builds, but names no blocks and cannot remove them
        name = "partial"

        def build(self, cfg, shape):
            return torch.nn.Linear(1, 1)

    with pytest.raises(TypeError, match="abstract"):
        networks.FAMILIES.registered()(Partial)
    assert "partial" not in networks.FAMILIES


def test_removable_paths_are_the_removable_blocks_in_forward_order():
    plan = resnet_plan(20)
    assert networks.removable_paths(build(plan)) == [f"blocks.{i}" for i in plan.removable]
