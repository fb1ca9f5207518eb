"""What a trial *is*, as opposed to how and where it ran.

A trial's identity is its resolved config less the settings that only say how or where it runs
(the schema marks them ``execution``: threads, device choice, progress bars, store, cache and
tracking paths, trials at once), with the data named by its content fingerprint instead of its
folder. Two keys derive from it:
``cell_key`` (identity without the seed: the runs of one table cell, one per seed) and
``config_key`` (identity, seed and the precision ``amp`` resolved to: a finished trial to skip), and
``dense_spec`` (the part of the identity a dense run reads, seed and precision: its store key).

Keys last: adding a key to the schema, or moving one into the kind that reads it, never changes
an existing trial's identity (docs/design.md §10). The keys of format 1 (``identity_format1.json``,
with their defaults) are always in it, those a kind does not declare at their format-1 default; a
key declared since enters only when set away from its default. So a default, once declared,
never changes, and a kind that declares a format-1 key declares it with its format-1 default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lottery.cli import RENAMED
from lottery.config import TrialConfig
from lottery.files import content_key
from lottery.networks import FAMILIES

DENSE_READS = ("model", "data", "train", "optim", "schedule")  # the config groups a dense run's training reads
FORMAT1 = json.loads(Path(__file__).with_name("identity_format1.json").read_text())
# Keys of format 1 that have moved to the group of the kind that reads them, by their new path:
# the identity names them as format 1 did (optim.lr is train.lr there, for every optimizer).
MOVED = {new: old for old, new in RENAMED.items()}


@dataclass(frozen=True)
class Leaf:
    """One leaf of a composed config: its value (resolved), as written (interpolations unresolved),
    and the field that declares it (None for a key added with ``+``/``++`` that nothing declares)."""

    path: str
    value: object
    written: object
    field: dataclasses.Field | None

    @property
    def execution(self) -> bool:
        return bool(self.field and self.field.metadata.get("execution"))

    @property
    def at_default(self) -> bool:
        """Whether it is left at its declared default (compared as written, so an interpolated
        default is at its default while it stays the same interpolation)."""
        if self.field is None:
            return False
        f = self.field
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            return False
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        default = OmegaConf.to_container(OmegaConf.create({"v": default}), enum_to_str=True)["v"]
        return self.written == default


def leaves(cfg: TrialConfig) -> list[Leaf]:
    """Every leaf of a composed config; a dict-valued key (``model.kwargs``) is one leaf."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    written = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return list(_walk(cfg, resolved, written, ""))


def _walk(node: DictConfig, resolved: dict, written: dict, prefix: str):
    fields = {f.name: f for f in dataclasses.fields(OmegaConf.get_type(node))}
    for key, value in resolved.items():
        if dataclasses.is_dataclass(OmegaConf.get_type(node, key)):
            yield from _walk(node[key], value, written[key], f"{prefix}{key}.")
        else:
            yield Leaf(f"{prefix}{key}", value, written[key], fields.get(key))


def identity(cfg: TrialConfig, data_fingerprint: str) -> dict:
    """The trial's config as a plain dict, less execution settings and seed, plus its data's content."""
    kept = {MOVED.get(leaf.path, leaf.path): leaf.value for leaf in leaves(cfg)
            if leaf.path != "seed" and not leaf.execution
            and (MOVED.get(leaf.path, leaf.path) in FORMAT1 or not leaf.at_default)}
    for path, default in FORMAT1.items():
        kept.setdefault(path, default)
    spec: dict = {}
    for path, value in kept.items():
        *parents, leaf = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    spec["data"]["content"] = data_fingerprint
    content = FAMILIES[cfg.model.family].content(cfg.model)
    if content is not None:  # weights the config names only by a path: by their digest
        spec["model"]["content"] = content
    return spec


def section(cfg: TrialConfig, group: str) -> dict:
    """One group of the identity (``criterion``, ``model``, ...): what keys of a trial's own
    state read of it, so they last like the trial's keys."""
    return identity(cfg, "")[group]


def cell_key(cfg: TrialConfig, data_fingerprint: str) -> str:
    """Same for every seed of one configuration: the runs a table cell aggregates."""
    return content_key(identity(cfg, data_fingerprint))


def config_key(cfg: TrialConfig, data_fingerprint: str, precision: str) -> str:
    """One trial's outcome: a finished run with this key need not run again."""
    return content_key({"cell": cell_key(cfg, data_fingerprint), "seed": cfg.seed, "precision": precision})


def trial_keys(cfg: TrialConfig, data_fingerprint: str, precision: str) -> dict:
    """The trial's cell and config keys, as tagged on its run (and looked up to skip it)."""
    return {"cell_key": cell_key(cfg, data_fingerprint), "config_key": config_key(cfg, data_fingerprint, precision)}


def dense_spec(cfg: TrialConfig, data_fingerprint: str, precision: str) -> dict:
    """What defines the dense run a trial prunes (its store key's content): the identity's model,
    data and recipe, the seed, and the precision ``amp`` resolves to (bf16 on one machine, fp32 on
    another), so a stored fp32 network never stands in for a bf16 one."""
    spec = identity(cfg, data_fingerprint)
    spec["train"].pop("amp")  # the choice (auto, bf16) matters only through the precision it resolves to
    optim = spec.pop("optim", {})
    optim.pop("rewind_state", None)  # where a ticket's optimizer starts: not the dense run's training
    if optim:
        spec["optim"] = optim
    return {**{k: spec[k] for k in DENSE_READS if k in spec}, "seed": cfg.seed, "precision": precision}


def training_key(dense_key: str, mode: str, rewind: int, seed: int, removal: dict) -> str:
    """The key of one ticket's training state in the store (what a killed trial resumes from): the
    dense run it comes from, the mode, rewind point and seed, and what it removes (``removal``: the
    blocks chosen, or for rounds chosen as they go, the count, the rounds and the criterion)."""
    return content_key({"dense": dense_key, "mode": mode, "rewind": rewind, "seed": seed, **removal})
