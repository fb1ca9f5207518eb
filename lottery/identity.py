"""What a trial *is*, as opposed to how and where it ran.

A trial's identity is its resolved config less the settings that only say how or where it runs
(the schema marks them ``execution``: threads, device choice, progress bars, store, cache and
tracking paths, trials at once), with the data named by its content fingerprint instead of its
folder. Two keys derive from it:
``cell_key`` (identity without the seed: the runs of one table cell, one per seed) and
``config_key`` (identity, seed and the precision ``amp`` resolved to: a finished trial to skip), and
``dense_spec`` (the part of the identity a dense run reads, seed and precision: its store key).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from lottery.config import execution_paths
from lottery.data import fingerprint
from lottery.store import content_key
from lottery.devices import precision

EXECUTION = execution_paths()  # dotted config paths that never change a trial's results
DENSE_READS = ("model", "data", "train")  # the config groups a dense run's training depends on


def identity(cfg, data_fingerprint: str) -> dict:
    """The trial's config as a plain dict, less execution settings and seed, plus its data's content."""
    spec = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    spec.pop("seed", None)
    for path in EXECUTION:
        *parents, leaf = path.split(".")
        node = spec
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    spec = {k: v for k, v in spec.items() if v != {}}  # a group of execution settings alone leaves nothing
    spec["data"]["content"] = data_fingerprint
    return spec


def cell_key(cfg, data_fingerprint: str) -> str:
    """Same for every seed of one configuration: the runs a table cell aggregates."""
    return content_key(identity(cfg, data_fingerprint))


def config_key(cfg, data_fingerprint: str, precision: str) -> str:
    """One trial's outcome: a finished run with this key need not run again."""
    return content_key({"cell": cell_key(cfg, data_fingerprint), "seed": cfg.seed, "precision": precision})


def resolved(cfg, device) -> tuple[str, str]:
    """What a config leaves to its machine and data folder: the data's content fingerprint and the
    precision ``amp`` resolves to on ``device``."""
    return fingerprint(cfg.data), precision(device, cfg.train.amp)


def trial_keys(cfg, device, precision: str | None = None) -> dict:
    """The trial's cell and config keys, as tagged on its run (and looked up to skip it); with
    ``precision``, for a worker whose device resolves ``amp`` so (a sweep surveyed from a login node)."""
    data_id, amp = resolved(cfg, device)
    return {"cell_key": cell_key(cfg, data_id), "config_key": config_key(cfg, data_id, precision or amp)}


def dense_spec_for(cfg, device) -> dict:
    """``dense_spec`` of the dense run a trial on ``device`` prunes (its content is its store key)."""
    return dense_spec(cfg, *resolved(cfg, device))


def dense_spec(cfg, data_fingerprint: str, precision: str) -> dict:
    """What defines the dense run a trial prunes (its store key's content): the identity's model,
    data and recipe, the seed, and the precision ``amp`` resolves to (bf16 on one machine, fp32 on
    another), so a stored fp32 network never stands in for a bf16 one."""
    spec = identity(cfg, data_fingerprint)
    spec["train"].pop("amp")  # the choice (auto, bf16) matters only through the precision it resolves to
    return {**{k: spec[k] for k in DENSE_READS}, "seed": cfg.seed, "precision": precision}
