"""timm's model zoo: ``model=timm model.arch=NAME`` for any architecture whose residual blocks are
of a type this family knows (ResNet/ResNeXt BasicBlock and Bottleneck, ConvNeXtBlock, the ViT and
DeiT Block), built by ``timm.create_model`` with ``model.kwargs`` (``img_size``/``patch_size`` for
CIFAR-sized ViTs) and no weights downloaded; ``model.pretrained=PATH`` starts from a local
checkpoint, whose content then names the model in the trial's identity. Filter tickets narrow
the inner convolutions of ungrouped BasicBlocks and Bottlenecks. timm is imported when a timm
network is first built, not by every process.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from lottery.config import ModelConfig, opt
from lottery.errors import LotteryError, one_line
from lottery.files import sha256_file
from lottery.networks.base import FAMILIES, IdentityRule
from lottery.networks.surgery import ModuleFamily

log = logging.getLogger("lottery")


@dataclass
class TimmSettings(ModelConfig):
    arch: Optional[str] = opt(None, "a timm architecture, e.g. resnet18, convnext_atto, deit_tiny_patch16_224")
    kwargs: Dict[str, Any] = opt(help="arguments of timm.create_model (img_size, patch_size, drop_path_rate, ...), "
                                      "added with ++model.kwargs.NAME=VALUE (num_classes comes from the data)",
                                 factory=dict)
    pretrained: Optional[str] = opt(None, "a local checkpoint (.safetensors, .pt, .pth) to start from; nothing is "
                                          "ever downloaded")
    zero_init_last: bool = opt(False, "true: timm's own ResNet init, each block's last norm at zero (its blocks start "
                                      "as the identity, and gradient criteria at initialization score them all 0); "
                                      "false: at one, as torchvision's and the paper's ResNets start")


@functools.cache
def residual_blocks() -> dict[type, IdentityRule]:
    """timm's residual block types, each with the rule for an identity shortcut."""
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.resnet import BasicBlock, Bottleneck
    from timm.models.vision_transformer import Block

    return {BasicBlock: lambda m: m.downsample is None, Bottleneck: lambda m: m.downsample is None,
            ConvNeXtBlock: lambda m: isinstance(m.shortcut, nn.Identity), Block: lambda m: True}


@functools.cache
def inner() -> dict[type, list[tuple[str, str, str]]]:
    from timm.models.resnet import BasicBlock, Bottleneck

    return {BasicBlock: [("conv1", "bn1", "conv2")], Bottleneck: [("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")]}


def last_norms_at_one(net: nn.Module) -> None:
    """Each ResNet block's last normalisation (which timm starts at zero) at one."""
    from timm.models.resnet import BasicBlock, Bottleneck

    for m in net.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            nn.init.ones_((m.bn2 if isinstance(m, BasicBlock) else m.bn3).weight)


def load_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint, read without unpickling code."""
    file = Path(path).expanduser()
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file  # comes with timm

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a missing, foreign or corrupt file
        raise LotteryError(f"model.pretrained={path} cannot be read as a checkpoint ({one_line(e)})") from None
    for key in ("state_dict", "model"):  # a training script's checkpoint around the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


@FAMILIES.registered(TimmSettings)
class Timm(ModuleFamily):
    name = "timm"

    def check(self, cfg: TimmSettings, shape):
        import timm

        if not cfg.arch or not timm.is_model(cfg.arch):
            close = difflib.get_close_matches(str(cfg.arch), timm.list_models(), n=5, cutoff=0.6)
            raise LotteryError(f"model.arch={cfg.arch} is not a timm architecture"
                               + (f"; the closest timm lists: {', '.join(close)}" if close else
                                  "; python -c 'import timm; print(timm.list_models())' lists them"))
        if cfg.pretrained and not Path(cfg.pretrained).expanduser().is_file():
            raise LotteryError(f"model.pretrained={cfg.pretrained} is not a file")

    def arch(self, cfg: TimmSettings, shape):
        return {"arch": cfg.arch, "kwargs": dict(cfg.kwargs), "zero_init_last": cfg.zero_init_last}

    def construct(self, arch):
        import timm

        kwargs = {**arch["kwargs"], "num_classes": arch["classes"]}
        try:
            net = timm.create_model(arch["arch"], pretrained=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - a builder rejects arguments in many ways
            raise LotteryError(f"timm.create_model({arch['arch']}, {', '.join(f'{k}={v}' for k, v in kwargs.items())}) "
                               f"failed: {one_line(e)}; check model.kwargs") from None
        if not arch.get("zero_init_last", True):
            last_norms_at_one(net)
        return net

    def build(self, cfg: TimmSettings, shape):
        net = super().build(cfg, shape)
        if cfg.pretrained and next(net.parameters()).device.type != "meta":  # a skeleton holds no weights
            own = net.state_dict()
            state = load_checkpoint(cfg.pretrained)
            fresh = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
            if fresh:
                log.warning("model.pretrained: %s keep their fresh initialisation (shapes differ from the checkpoint's: "
                            "another class count?)", ", ".join(fresh))
            missing, _ = net.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
            if [k for k in missing if k not in fresh]:
                raise LotteryError(f"model.pretrained={cfg.pretrained} lacks {len(missing)} weights of {cfg.arch} "
                                   f"(e.g. {missing[0]}): is it a checkpoint of this architecture?")
        return net

    def content(self, cfg: TimmSettings) -> str | None:
        return sha256_file(Path(cfg.pretrained).expanduser()) if cfg.pretrained else None

    def block_types(self):
        return residual_blocks()

    def inner_convs(self):
        return inner()
