"""Every model family behind the one contract: surgery equals skipping, costs drop by exactly
what the removed blocks cost, records round-trip, every criterion scores every family (or says in
one line why not), and bad model configs are one line before any work."""

import re
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from lottery import networks
from lottery.errors import LotteryError
from lottery.experiment.design import validate
from lottery.files import sha256_file
from lottery.measure.costs import ATTENTION, flops
from lottery.networks import Shape
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks
from lottery.tracking.tickets import from_file, ticket_file
from tests.helpers import FAKE_CUDA, REPO, compose_cfg, fake_cuda, kind_config, on_fake_cuda, randomize, refusal

SHAPE = Shape((3, 32, 32), 10)
VIT = {"image_size": 32, "patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
# Small widths keep every family fast; each stands for its block type.
FAMILIES = {
    "cifar_resnet": {"family": "cifar_resnet", "depth": 14},
    "resnet18": {"family": "torchvision", "arch": "resnet18", "stem": "cifar"},  # BasicBlock
    "resnet50": {"family": "torchvision", "arch": "resnet50", "stem": "cifar", "kwargs": {"width_per_group": 8}},
    "mobilenet_v2": {"family": "torchvision", "arch": "mobilenet_v2", "kwargs": {"width_mult": 0.25}},
    "convnext_tiny": {"family": "torchvision", "arch": "convnext_tiny"},
    "vit": {"family": "torchvision", "arch": "VisionTransformer", "kwargs": VIT},
    "custom": {"family": "custom", "target": "my_models:preact_net", "block_types": ["my_models:PreActBlock"],
               "kwargs": {"width": 8, "depth": 4}},
    "custom_known_blocks": {"family": "custom", "target": "known_blocks:resnet_of_torchvision_blocks"},  # no block_types
    "timm_resnet": {"family": "timm", "arch": "resnet18"},  # BasicBlock
    "timm_bottleneck": {"family": "timm", "arch": "resnet26", "kwargs": {"base_width": 16}},  # Bottleneck
    "timm_convnext": {"family": "timm", "arch": "convnext_atto"},
    "timm_deit": {"family": "timm", "arch": "deit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8,
                                                                                "depth": 3, "embed_dim": 32,
                                                                                "num_heads": 2}},
}
KNOWN_BLOCKS = """
from torch import nn
from torchvision.models.resnet import BasicBlock


def resnet_of_torchvision_blocks(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         BasicBlock(16, 16), BasicBlock(16, 16), BasicBlock(16, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
"""


def readme_example() -> str:
    """The README's own-model example, as it is printed there."""
    text = (REPO / "README.md").read_text()
    return re.search(r"```python\n(# my_models\.py\n.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module", autouse=True)
def my_models(tmp_path_factory):
    """The README's example module, importable as ``my_models``."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "my_models.py").write_text(readme_example())
    (folder / "known_blocks.py").write_text(KNOWN_BLOCKS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("my_models", None)
    sys.modules.pop("known_blocks", None)


def config(name: str):
    spec = dict(FAMILIES[name])
    return OmegaConf.structured(kind_config(networks.FAMILIES, spec.pop("family"), **spec))


def network(name: str, seed: int = 0):
    """A network of the family in which no block is close to the identity and no output is
    constant: random BN statistics; ConvNeXt's layer scale (1e-6 at initialisation) set to 0.5;
    ViT's zero-initialised head drawn at random."""
    torch.manual_seed(seed)
    net = randomize(networks.build(config(name), SHAPE), seed)
    for k, p in net.named_parameters():
        if k.endswith(("layer_scale", ".gamma")):  # torchvision's and timm's ConvNeXt layer scale
            p.data.fill_(0.5)
        elif p.dim() >= 2 and not p.any():
            torch.nn.init.normal_(p, std=0.5)
    return net


def images(n=2, seed=1):
    return torch.randn(n, *SHAPE.input, generator=torch.Generator().manual_seed(seed))


def two_removable(net) -> list[str]:
    removable = networks.anatomy(net).removable
    return [removable[0].path, removable[-1].path]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_network_without_blocks_equals_the_original_with_them_skipped(name):
    net = network(name)
    gone = two_removable(net)
    ticket = networks.without(net, gone)
    x = images()
    with torch.no_grad():
        got = ticket(x)
        with networks.skipping(net, gone[0]), networks.skipping(net, gone[1]):
            expected = net(x)
        full = net(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, expected, atol=1e-4)  # skipping changes the output: the test can fail
    assert networks.count_params(ticket) < networks.count_params(net)
    assert len(networks.anatomy(ticket).blocks) == len(networks.anatomy(net).blocks) - 2


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_runs_forward_on_a_fake_cuda_1_without_a_cpu_tensor_or_a_host_sync(name):
    """A CPU tensor made inside a forward pass (a mask, a position table) or a ``.item()`` would
    fail here as it fails on a GPU; the shorter network stays there too."""
    mode = FakeTensorMode()
    net = network(name)
    shorter = on_fake_cuda(mode, networks.without(net, two_removable(net)))  # (rebuilt on the host: see test_gpu_path)
    net, x = on_fake_cuda(mode, net), fake_cuda(mode, images())
    with mode:
        for training in (True, False):
            assert net.train(training)(x).device == FAKE_CUDA
        assert shorter(x).device == FAKE_CUDA


def alone(net, path: str) -> int:
    """FLOPs of one block measured on its own, on the input it sees in the network."""
    seen = []
    hook = net.get_submodule(path).register_forward_hook(lambda m, a, y: seen.append(a[0]))
    with torch.no_grad():
        net(torch.zeros(1, *SHAPE.input))
    hook.remove()
    with FlopCounterMode(display=False, custom_mapping=ATTENTION) as counter, torch.no_grad():
        net.get_submodule(path)(seen[0])
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ticket_flops_are_the_dense_flops_less_the_removed_blocks_measured_alone(name):
    net = network(name).eval()
    gone = two_removable(net)
    assert flops(networks.without(net, gone)) == flops(net) - sum(alone(net, p) for p in gone)
    assert all(alone(net, p) > 0 for p in gone)


def test_resnet18_with_the_cifar_stem_has_the_usual_parameter_count():
    assert networks.count_params(network("resnet18")) == 11_173_962
    anatomy = networks.anatomy(network("resnet18"))
    assert [b.path for b in anatomy.removable] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert anatomy.max_removable == 4 and anatomy.layout == "maps" and anatomy.head == "fc"


def test_shipped_configs_build_what_they_say():
    vit = networks.skeleton(compose_cfg("model=vit_tiny", "data=synthetic").model, SHAPE)
    assert 5.0e6 < networks.count_params(vit) < 5.6e6 and networks.anatomy(vit).layout == "tokens"
    assert len(networks.anatomy(vit).removable) == 12 and networks.anatomy(vit).max_removable == 11  # one stage
    mobile = networks.anatomy(networks.skeleton(compose_cfg("model=mobilenet_v2").model, SHAPE))
    assert len(mobile.removable) == mobile.max_removable == 10  # every stage opens with a shape-changing block
    convnext = networks.anatomy(networks.skeleton(compose_cfg("model=convnext_tiny").model, SHAPE))
    assert (len(convnext.removable), convnext.max_removable) == (18, 14)  # 3 + 3 + 9 + 3, one kept per stage
    resnet50 = networks.anatomy(networks.skeleton(compose_cfg("model=resnet50").model, SHAPE))
    assert (len(resnet50.blocks), len(resnet50.removable)) == (16, 12)  # the first block of every stage projects


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_saved_ticket_rebuilds_to_the_same_network(name):
    net = network(name)
    ticket = networks.without(net, two_removable(net)[:1]).eval()
    if name in ("cifar_resnet", "resnet18", "resnet50"):  # families with a filter plan: narrow one conv too
        first = networks.narrowables(ticket)[0]
        ticket = networks.narrowed(ticket, {first.conv: list(range(0, first.width, 2))}).eval()
    saved = ticket_file(ticket)
    restored = from_file(_roundtrip(saved))  # through torch.save and torch.load(weights_only=True)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), ticket(x), rtol=0, atol=0)
    assert networks.record(restored) == saved["arch"]


def _roundtrip(obj):
    import io

    f = io.BytesIO()
    torch.save(obj, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_criterion_scores_every_family_or_says_why_not(name, criterion):
    net = network(name)
    anatomy = networks.anatomy(net)
    if CRITERIA[criterion].layout not in (None, anatomy.layout):
        cfg = compose_cfg("profile=smoke", "data=synthetic", f"criterion={criterion}", "model=vit_tiny")
        fits = ", ".join(n for n in sorted(CRITERIA) if CRITERIA[n].layout is None)
        with pytest.raises(LotteryError, match=f"criterion {criterion} reads maps .* vit_tiny's blocks output tokens: "
                                               f"use one of {fits}"):
            validate(cfg)
        return
    data = ScoringSet(images(10, 2), torch.arange(10) % 10, 10)
    scores = score_blocks(criterion, net, data, kind_config(CRITERIA, criterion), seed=0)
    assert scores.shape == (len(anatomy.removable),) and torch.isfinite(scores).all()


def test_filter_tickets_narrow_resnet_blocks_and_equal_the_masked_network():
    net = network("resnet50").eval()
    convs = networks.narrowables(net)
    assert [n.conv for n in convs[:2]] == ["layer1.0.conv1", "layer1.0.conv2"]  # a Bottleneck's two inner convs
    keep = {n.conv: list(range(0, n.width, 2)) for n in convs}
    narrow = networks.narrowed(net, keep)
    for n in convs:  # masking: the next convolution no longer reads the dropped channels
        dropped = [c for c in range(n.width) if c not in keep[n.conv]]
        net.get_submodule(n.next).weight.data[:, dropped] = 0
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), net(x), rtol=1e-4, atol=1e-5)
    removed = sum(n.width - len(keep[n.conv]) for n in convs)
    assert networks.count_filters(narrow) == networks.count_filters(net) - removed


def test_surgery_keeps_the_memory_format_device_and_mode():
    net = network("resnet18").to(memory_format=torch.channels_last).train()
    ticket = networks.without(net, ["layer1.0"])
    assert networks.channels_last(ticket) and ticket.training
    narrow = networks.narrowed(net.eval(), {"layer1.1.conv1": [0, 1, 2]})
    assert networks.channels_last(narrow) and not narrow.training


@pytest.mark.parametrize("overrides,message", [
    (["model.family=nosuch"], "unknown model.family 'nosuch'; choose one of: cifar_resnet, custom, hf_causal_lm, timm, torchvision"),
    (["model=torchvision", "model.arch=resnet7"], "unknown model.arch 'resnet7'; choose one of: "),
    (["model=torchvision", "model.arch=efficientnet_b0"],
     "efficientnet_b0 has no residual blocks of a registered type (BasicBlock, Bottleneck, InvertedResidual, "
     "CNBlock, EncoderBlock); its block types are "),
    (["model=resnet18", "density=5"], "density=5 is above resnet18's maximum of 4 blocks (5 removable"),
    (["model=vit_tiny", "criterion=hrank"], "criterion hrank reads maps (N, C, H, W) at block outputs"),
    (["model=mobilenet_v2", "structure=filter"], "structure=filter narrows the inner convolutions of ResNet blocks"),
    (["model=torchvision", "model.arch=mobilenet_v2", "model.stem=cifar"], "model.stem=cifar replaces a ResNet's"),
    (["model=torchvision", "model.arch=resnet18", "++model.kwargs.depth=3"], "torchvision.models.resnet18("),
    (["model=custom"], "model=custom needs model.target=pkg.module:factory"),
    (["model=custom", "model.target=no_such_module:net", "model.blocks=[a]"], "cannot import no_such_module"),
    (["model=custom", "model.target=collections:OrderedDict", "model.blocks=[a]"],
     "returned OrderedDict, not an nn.Module"),
    (["model=custom", "model.target=my_models:preact_net"], "model.block_types=[pkg.module:Block] or model.blocks"),
    (["model=custom", "model.target=my_models:preact_net", "model.blocks=[99]"], "has no modules ['99']"),
    (["model=custom", "model.target=my_models:preact_net", "model.block_types=[my_models:PreActBlock]",
      "structure=filter"], "structure=filter is not defined for model.family=custom"),
    (["model=timm", "model.arch=resnet19"], "model.arch=resnet19 is not a timm architecture; the closest timm lists: "
                                            "resnet18"),
    (["model=timm", "model.arch=efficientnet_b0"], "efficientnet_b0 has no residual blocks of a registered type "
                                                   "(BasicBlock, Bottleneck, ConvNeXtBlock, Block); its block types "
                                                   "are BatchNormAct2d"),
    (["model=timm", "++model.kwargs.foo=1"], "timm.create_model(resnet18, foo=1, num_classes=10) failed: TypeError"),
])
def test_bad_model_configs_are_one_line_before_any_work(overrides, message):
    assert message in refusal(*overrides)


def test_the_readme_example_trains_a_ticket_of_a_model_lottery_does_not_ship(smoke):
    from lottery import load_ticket
    from lottery.experiment import trial

    cfg = smoke("model=custom", "model.target=my_models:preact_net", "model.block_types=[my_models:PreActBlock]",
                "++model.kwargs={width: 8, depth: 4}", "criterion=snip", "density=2", "measure.enabled=false",
                "robustness.enabled=false", "data.train_size=128")
    out = trial.run(cfg)
    assert out["name"] == "init-snip-p2-preact_net-s0" and out["blocks_removed"] == 2
    ticket = load_ticket(out["run_id"], uri=cfg.tracking.uri)
    assert len(networks.anatomy(ticket).blocks) == 2 and networks.count_params(ticket) == out["params"]


def test_a_timm_network_starts_from_a_local_checkpoint_which_names_it_in_the_identity(tmp_path):
    from safetensors.torch import save_file

    from lottery.experiment.identity import identity

    spec = dict(FAMILIES["timm_deit"])
    torch.manual_seed(1)
    source = networks.build(config("timm_deit"), SHAPE)
    checkpoint = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(checkpoint))
    cfg = compose_cfg("profile=smoke", "data=synthetic", "model=timm", f"model.arch={spec['arch']}",
                      *(f"++model.kwargs.{k}={v}" for k, v in spec["kwargs"].items()), f"model.pretrained={checkpoint}")
    torch.manual_seed(2)  # another initialisation, which the checkpoint replaces
    started = networks.build(cfg.model, SHAPE)
    assert all(torch.equal(started.state_dict()[k], v) for k, v in source.state_dict().items())
    assert identity(cfg, "d")["model"]["content"] == sha256_file(checkpoint)
    bare = compose_cfg("profile=smoke", "data=synthetic", "model=timm")
    assert "content" not in identity(bare, "d")["model"]
    with pytest.raises(LotteryError, match="model.pretrained=.* is not a file"):
        validate(compose_cfg("profile=smoke", "data=synthetic", "model=timm", f"model.pretrained={tmp_path / 'no'}"))
