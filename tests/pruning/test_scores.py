"""Scores that mean what they say on every family (docs/design.md §3): each criterion reads the
weights its definition names, chosen by module type; scores that cannot choose stop the trial
before any training; only the seed moves a score; and the depth criteria on known cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from lottery import networks
from lottery.errors import LotteryError
from lottery.experiment import trial
from lottery.networks import Shape
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.pruning.structures import Request
from lottery.pruning.structures.layer import layers
from lottery.tracking.store import DenseStore
from tests.helpers import compose_cfg, kind_config, randomize

SHAPE = Shape((3, 32, 32), 10)
SMALL_VIT = ("model=vit_tiny", "++model.kwargs.num_layers=4", "++model.kwargs.hidden_dim=48",
             "++model.kwargs.mlp_dim=96")


def build(*overrides, seed=0):
    cfg = compose_cfg("profile=smoke", "data=synthetic", *overrides)
    torch.manual_seed(seed)
    return cfg, networks.build(cfg.model, SHAPE)


def scoring(n=20, batch=10):
    g = torch.Generator().manual_seed(1)
    return ScoringSet(torch.randn(n, *SHAPE.input, generator=g), torch.arange(n) % 10, batch)


def named_weights(net) -> dict[str, nn.Parameter]:
    """What the definitions name, found here independently: kernels of convolutions, weights of
    linear layers (attention's output projection is one) and attention's input projections."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[f"{name}.weight"] = m.weight
        elif isinstance(m, nn.MultiheadAttention):
            out[f"{name}.in_proj_weight"] = m.in_proj_weight
    return out


def per_block(net, per_weight: dict) -> torch.Tensor:
    return torch.stack([sum(v.double().sum() for k, v in per_weight.items() if k.startswith(f"{b.path}."))
                        for b in networks.anatomy(net).removable])


def loss_of(net, params: dict, data: ScoringSet, temperature=1.0):
    total = 0
    for x, y, w in data.chunks():
        total = total + F.cross_entropy(functional_call(net, params, (x,)) / temperature, y) * w
    return total


@pytest.mark.parametrize("model", [(*SMALL_VIT, "model.head_init=normal"), ("model=convnext_tiny",)])
def test_the_scored_weights_are_the_named_ones_and_snip_grasp_synflow_equal_a_per_weight_computation(model):
    cfg, net = build(*model)
    for k, p in net.named_parameters():
        if k.endswith("layer_scale"):
            p.data.fill_(0.5)  # ConvNeXt's 1e-6 would make every block nearly the identity
    named = named_weights(net)
    scored = networks.scored_weights(net, norms=False)
    assert set(scored) == set(named)
    assert not {k for k in scored if k.endswith(("class_token", "pos_embedding", "layer_scale", "bias"))}
    assert {k for k, _ in net.named_parameters() if k.endswith(("class_token", "pos_embedding", "layer_scale"))}
    data = scoring()
    work = networks.batch_statistics(randomize(net).train())  # BN (if any) from batch statistics, no dropout
    params = dict(work.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(loss_of(work, params, data), [params[k] for k in named])))
    snip = per_block(net, {k: (params[k] * grads[k]).abs() for k in named})
    torch.testing.assert_close(score_blocks("snip", net, data, cfg.criterion, 0), snip, rtol=1e-6, atol=1e-9)

    def grad_of(weights):
        return torch.autograd.grad(loss_of(work, {**params, **weights}, data, 200.0), list(weights.values()),
                                   create_graph=True)

    weights = {k: params[k] for k in named}
    with sdpa_kernel(SDPBackend.MATH):
        _, hg = torch.autograd.functional.vhp(lambda *w: loss_of(work, {**params, **dict(zip(named, w))}, data, 200.0),
                                              tuple(weights.values()),
                                              tuple(g.detach() for g in grad_of(weights)))
    grasp = per_block(net, {k: params[k].detach() * h for k, h in zip(named, hg)})
    torch.testing.assert_close(score_blocks("grasp", net, data, cfg.criterion, 0), grasp, rtol=1e-5, atol=1e-12)

    state = {k: v.detach().double().abs() for k, v in net.state_dict().items()}  # |whole state|, float64
    inputs = {k: state[k].clone().requires_grad_(k in named) for k in state}
    out = functional_call(net.double().eval(), inputs, (torch.ones(1, *SHAPE.input, dtype=torch.float64),)).sum()
    synflow = per_block(net, {k: (inputs[k] * g).abs() for k, g in zip(named, torch.autograd.grad(
        out, [inputs[k] for k in named]))})
    torch.testing.assert_close(score_blocks("synflow", net, None, cfg.criterion, 0), synflow, rtol=1e-6, atol=1e-12)


def test_snip_on_a_zero_head_vit_is_one_line_and_the_head_remedy_gives_distinct_scores():
    cfg, net = build(*SMALL_VIT, "criterion=snip", "density=2")
    request = Request(cfg, 2, net, scoring())
    with pytest.raises(LotteryError) as e:
        layers(request)
    message = str(e.value)
    assert message.startswith("snip scores of vit_tiny at initialization are all 0: it cannot tell the blocks apart")
    assert "classifier heads.head is all zero" in message and "model.head_init=normal" in message
    assert "\n" not in message
    cfg, net = build(*SMALL_VIT, "criterion=snip", "density=2", "model.head_init=normal")
    scores = torch.tensor(layers(Request(cfg, 2, net, scoring())).record["scores"])
    assert len(set(scores.tolist())) == len(scores)  # every block told apart
    cfg, net = build(*SMALL_VIT, "criterion=snip", "density=2", "criterion.ties=index")
    accepted = layers(Request(cfg, 2, net, scoring()))
    assert accepted.tags["ties"].startswith("index: block order chose among tied")
    assert accepted.record["removed"] == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]


def test_a_trial_whose_criterion_cannot_choose_stops_before_any_training(smoke):
    cfg = smoke(*SMALL_VIT, "criterion=snip", "density=1", "data.train_size=64", "measure.enabled=false",
                "robustness.enabled=false")
    with pytest.raises(LotteryError, match="cannot tell the blocks apart"):
        trial.run(cfg)
    assert not list(DenseStore(cfg.store.root).dir.glob("*/meta.json"))  # no dense network trained


def test_the_seed_alone_moves_the_scores_of_a_network_with_dropout():
    cfg, net = build("model=mobilenet_v2", "++model.kwargs.width_mult=0.25")
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in net.modules())
    data = scoring()
    for name in ("snip", "grasp"):
        first = score_blocks(name, net, data, kind_config(CRITERIA, name), 0)
        torch.rand(1000)  # unrelated draws from the global generator
        torch.randn(7, 3)
        again = score_blocks(name, net, data, kind_config(CRITERIA, name), 0)
        assert torch.equal(first, again), name


def test_the_depth_criteria_on_known_cases(monkeypatch, tmp_path):
    import sys

    (tmp_path / "known_blocks.py").write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Scaled(nn.Module):\n"
        "    def __init__(self, scale):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(8, 8, 3, padding=1)\n"
        "        self.scale = scale\n\n"
        "    def forward(self, x):\n"
        "        return self.scale * x + 0 * self.conv(x)\n\n\n"
        "def make(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Scaled(1.0), Scaled(-1.0), Scaled(2.0),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg, net = build("model=custom", "model.target=known_blocks:make", "model.blocks=[1,2,3]")
    data = scoring()
    influence = score_blocks("block_influence", net, data, kind_config(CRITERIA, "block_influence"), 0)
    angular = score_blocks("angular_distance", net, data, kind_config(CRITERIA, "angular_distance"), 0)
    torch.testing.assert_close(influence, torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(angular, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    span = score_blocks("angular_distance", net, data, kind_config(CRITERIA, "angular_distance", span=2), 0)
    torch.testing.assert_close(span, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    removal = score_blocks("loss_on_removal", net, data, kind_config(CRITERIA, "loss_on_removal"), 0)
    net.eval()
    for k, path in enumerate(["1", "2", "3"]):
        with torch.no_grad(), networks.skipping(net, path):
            expected = sum(F.cross_entropy(net(x).double(), y) * w for x, y, w in data.chunks())
        assert math.isclose(float(removal[k]), float(expected), rel_tol=1e-9)
    sys.modules.pop("known_blocks", None)


def test_a_tie_with_any_removed_block_that_a_stage_could_swap_is_found():
    from lottery.networks import Anatomy, Block
    from lottery.pruning.selection import select_blocks, tied_blocks

    blocks = (Block("a", 0, True), Block("b", 0, True), Block("x", 0, True), Block("c", 1, True), Block("d", 1, True),
              Block("e", 1, True))
    anatomy = Anatomy(blocks, "maps", "fc", (3, 32, 32))
    scores = torch.tensor([0.0, 0.0, 9.0, 5.0, 6.0, 7.0], dtype=torch.float64)
    removed = select_blocks(anatomy, scores, 2)
    assert removed == ["a", "b"] and tied_blocks(anatomy, scores, removed) == []  # both zeros go: no choice made
    removed = select_blocks(anatomy, scores, 1)
    assert removed == ["a"] and tied_blocks(anatomy, scores, removed) == ["b"]  # block order chose a over b
    two_stages = Anatomy(blocks[:2] + blocks[3:], "maps", "fc", (3, 32, 32))
    scores = torch.tensor([0.0, 0.0, 5.0, 6.0, 7.0], dtype=torch.float64)
    removed = select_blocks(two_stages, scores, 2)  # stage 0 keeps one: a goes, then c
    assert removed == ["a", "c"] and tied_blocks(two_stages, scores, removed) == ["b"]  # a lower tie, found too
