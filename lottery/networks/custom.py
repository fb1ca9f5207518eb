"""Your own network: ``model=custom model.target=pkg.module:factory`` with its residual blocks
named either by type (``model.block_types=[pkg.module:Block]``, or a type some family knows,
such as torchvision's ``BasicBlock``) or by module path (``model.blocks=[layer1.0, ...]``); a
network built from block types some family knows (torchvision's, timm's) needs neither.

The factory is called with ``model.kwargs`` (and ``num_classes`` when it takes that argument) and
must return an ``nn.Module`` whose last ``nn.Linear`` is the classifier. A named block must
compute ``y = x + f(x)``: lottery checks that its input and output shapes match and trusts the
identity shortcut. Rebuilding a saved ticket imports ``model.target`` again.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from torch import nn

from lottery.config import ModelConfig, opt
from lottery.errors import LotteryError, one_line
from lottery.networks.base import FAMILIES, known_blocks
from lottery.networks.surgery import ModuleFamily, blocks_found


@dataclass
class CustomSettings(ModelConfig):
    target: Optional[str] = opt(None, "pkg.module:factory returning the network")
    kwargs: Dict[str, Any] = opt(help="arguments of the factory, added with ++model.kwargs.NAME=VALUE (num_classes "
                                      "comes from the data when it takes one)", factory=dict)
    block_types: List[str] = opt(help="residual block classes (pkg.module:Class, or a type some family knows, such "
                                      "as BasicBlock)", factory=list)
    blocks: List[str] = opt(help="residual blocks by module path (instead of block_types)", factory=list)


def resolve(target: str, what: str):
    """The object a ``pkg.module:name`` string names, or one line saying why not."""
    module, _, name = str(target).partition(":")
    if not module or not name:
        raise LotteryError(f"{what}={target}: write pkg.module:name (e.g. my_models:resnet)")
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        raise LotteryError(f"{what}={target}: cannot import {module} ({one_line(e)}); is it on PYTHONPATH?") from None
    except SyntaxError as e:
        raise LotteryError(f"{what}={target}: {e.filename}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - importing the user's module ran its code, which may raise anything
        raise LotteryError(f"{what}={target}: importing {module} raised {one_line(e)}") from None
    if not hasattr(found, name):
        raise LotteryError(f"{what}={target}: {module} has no {name}")
    return getattr(found, name)


def block_type(name: str) -> type:
    known = {t.__name__: t for t in known_blocks()}
    if name in known:
        return known[name]
    found = resolve(name, "model.block_types")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise LotteryError(f"model.block_types: {name} is not an nn.Module class")
    return found


@FAMILIES.registered(CustomSettings)
class Custom(ModuleFamily):
    name = "custom"

    def check(self, cfg: CustomSettings, shape):
        if not cfg.target:
            raise LotteryError("model=custom needs model.target=pkg.module:factory (a function or class that "
                               "returns your nn.Module)")
        if cfg.block_types and cfg.blocks:
            raise LotteryError("model=custom names its residual blocks by type (model.block_types) or by path "
                               "(model.blocks), not both")
        if not callable(resolve(cfg.target, "model.target")):
            raise LotteryError(f"model.target={cfg.target} is not callable")
        for name in cfg.block_types:
            block_type(name)

    def arch(self, cfg: CustomSettings, shape):
        return {"target": cfg.target, "kwargs": dict(cfg.kwargs), "block_types": list(cfg.block_types),
                "blocks": list(cfg.blocks)}

    def construct(self, arch):
        factory = resolve(arch["target"], "model.target")
        kwargs = dict(arch["kwargs"])
        try:
            if "num_classes" in inspect.signature(factory).parameters:
                kwargs["num_classes"] = arch["classes"]
        except (TypeError, ValueError):  # a builtin without a signature
            pass
        try:
            net = factory(**kwargs)
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            raise LotteryError(f"model.target={arch['target']} failed: {one_line(e)}") from None
        if not isinstance(net, nn.Module):
            raise LotteryError(f"model.target={arch['target']} returned {type(net).__name__}, not an nn.Module")
        linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if linear and linear[-1].out_features != arch["classes"]:
            raise LotteryError(f"model.target={arch['target']} gives {linear[-1].out_features} outputs but the data "
                               f"has {arch['classes']} classes: let the factory take num_classes")
        return net

    def label(self, cfg: CustomSettings):
        return cfg.name or str(cfg.target).rpartition(":")[2]

    def candidates(self, model):
        arch = model.lottery_arch
        if arch["blocks"]:
            missing = [p for p in arch["blocks"] if not _exists(model, p)]
            if missing:
                raise LotteryError(f"model.blocks: {model.lottery_arch['target']} has no modules {missing}")
            return [(p, True) for p in arch["blocks"] if not isinstance(model.get_submodule(p), nn.Identity)]
        rules = known_blocks()
        if not arch["block_types"]:  # blocks of a type some family knows
            found = blocks_found(model, rules)
            if not found:
                kinds = sorted({type(m).__name__ for m in model.modules()} - {"Sequential", "ModuleList"})
                raise LotteryError(f"model=custom needs its residual blocks: {arch['target']} has none of a type lottery "
                                   f"knows ({', '.join(sorted(t.__name__ for t in rules))}); its module types are "
                                   f"{', '.join(kinds)}: name them with model.block_types=[pkg.module:Block] or "
                                   "model.blocks=[module.path, ...]")
            return [(p, rules[type(m)](m)) for p, m in found]
        found = blocks_found(model, [block_type(n) for n in arch["block_types"]])
        if not found:
            raise LotteryError(f"model.block_types={arch['block_types']}: {arch['target']} has no such modules")
        return [(p, rules.get(type(m), lambda m: True)(m)) for p, m in found]


def _exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
