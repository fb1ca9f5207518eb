"""Any ``torchvision.models`` classification network whose residual blocks are of a registered
type: ``model=torchvision model.arch=NAME`` (``model.kwargs`` go to the builder; weights are
never downloaded, every network starts from its builder's own initialisation).

``residual_blocks()`` maps each block type to the rule saying when its shortcut is the identity:
BasicBlock and Bottleneck (ResNet, ResNeXt, Wide ResNet) without a ``downsample``, MobileNetV2's
InvertedResidual with ``use_res_connect``, ConvNeXt's CNBlock and the ViT EncoderBlock always.
``model.stem=cifar`` gives a ResNet the usual CIFAR stem: a 3x3 stride-1 convolution and no
max-pool. Filter tickets narrow the inner convolutions of ungrouped BasicBlocks and Bottlenecks
(each couples only to its BN and the next convolution of the same block). torchvision is
imported when a torchvision network is first built (about 2 s), not by every process.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any, Dict, Optional

from torch import nn

from lottery.config import ModelConfig, opt
from lottery.errors import LotteryError, one_line, unknown
from lottery.networks.base import FAMILIES, IdentityRule
from lottery.networks.surgery import ModuleFamily


class Stem(enum.Enum):
    default = "default"  # the builder's own
    cifar = "cifar"  # a ResNet's 7x7 stride-2 stem and max-pool replaced by a 3x3 stride-1 conv (32x32 images)


class HeadInit(enum.Enum):
    default = "default"  # the builder's own (torchvision's ViT starts its classifier at zero)
    normal = "normal"  # N(0, 1/fan_in) weights and zero bias, like a layer of the network


@dataclass
class TorchvisionSettings(ModelConfig):
    arch: Optional[str] = opt(None, "a torchvision.models builder or class, e.g. resnet18, mobilenet_v2, "
                                    "VisionTransformer")
    stem: Stem = opt(Stem.default, "ResNets: cifar = 3x3 stride-1 first conv and no max-pool")
    kwargs: Dict[str, Any] = opt(help="arguments of the builder, added with ++model.kwargs.NAME=VALUE (num_classes "
                                      "comes from the data)", factory=dict)
    head_init: HeadInit = opt(HeadInit.default, "the classifier's initialisation: default (the builder's; a ViT's is "
                                                "zero, so no gradient reaches its blocks at initialization) or normal "
                                                "(N(0, 1/fan_in), bias 0)")


@functools.cache
def residual_blocks() -> dict[type, IdentityRule]:
    """Registered residual block types, each with the rule for an identity shortcut."""
    from torchvision.models.convnext import CNBlock
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock

    return {BasicBlock: lambda m: m.downsample is None, Bottleneck: lambda m: m.downsample is None,
            InvertedResidual: lambda m: m.use_res_connect, CNBlock: lambda m: True, EncoderBlock: lambda m: True}


@functools.cache
def inner() -> dict[type, list[tuple[str, str, str]]]:
    """Inner convolutions of a block type: (conv, its norm, the next conv), relative to the block."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return {BasicBlock: [("conv1", "bn1", "conv2")], Bottleneck: [("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")]}


def architectures() -> list[str]:
    """Classification builders (``resnet18``, ...) and model classes (``VisionTransformer``, ...)."""
    import torchvision.models as tvm

    classes = [n for n, v in vars(tvm).items() if isinstance(v, type) and issubclass(v, nn.Module)]
    return sorted({*tvm.list_models(module=tvm), *classes})


def cifar_stem(net: nn.Module) -> None:
    """A 3x3 stride-1 first convolution and no max-pool: a ResNet for 32x32 images."""
    first = net.conv1
    net.conv1 = nn.Conv2d(first.in_channels, first.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's ResNet
    net.maxpool = nn.Identity()


def normal_head(net: nn.Module) -> None:
    """The classifier (the last nn.Linear) drawn from N(0, 1/fan_in), its bias zero."""
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, std=head.in_features ** -0.5)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


@FAMILIES.registered(TorchvisionSettings)
class Torchvision(ModuleFamily):
    name = "torchvision"

    def check(self, cfg: TorchvisionSettings, shape):
        if cfg.arch not in architectures():
            raise unknown("model.arch", str(cfg.arch), architectures())

    def arch(self, cfg: TorchvisionSettings, shape):
        return {"arch": cfg.arch, "kwargs": dict(cfg.kwargs), "stem": cfg.stem.value, "head_init": cfg.head_init.value}

    def construct(self, arch):
        import torchvision.models as tvm

        kwargs = {**arch["kwargs"], "num_classes": arch["classes"]}
        try:
            net = getattr(tvm, arch["arch"])(**kwargs)
        except Exception as e:  # noqa: BLE001 - a builder rejects arguments in many ways
            raise LotteryError(f"torchvision.models.{arch['arch']}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) "
                               f"failed: {one_line(e)}; check model.kwargs") from None
        if arch["stem"] == "cifar":
            if not isinstance(net, tvm.ResNet):
                raise LotteryError(f"model.stem=cifar replaces a ResNet's 7x7 stem and max-pool; {arch['arch']} is "
                                   "not a torchvision ResNet: use model.stem=default")
            cifar_stem(net)
        if arch.get("head_init") == HeadInit.normal.value:
            normal_head(net)
        return net

    def block_types(self):
        return residual_blocks()

    def inner_convs(self):
        return inner()
