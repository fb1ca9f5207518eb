"""What a trial is, derived from its config: validated at the door (every mistake a user can make,
said in one line, before any work) and its derived values (mode, device, blocks to remove,
rounds, rewind epoch, keys, the dense network's anatomy). Nothing is written and no data is
loaded (the config, the machine's devices, the data's listing and a user's model module are
read); the trial's context (``lottery.experiment.context``) adds the I/O, and the sweep estimate
reads the same derivation.

Each registry checks its own settings (a data source, a model family, a mode, a criterion, a
structure, the recipe, the shifted sets); ``validate`` only asks each of them in turn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from lottery import networks
from lottery.config import Registry, TrialConfig, bad_value
from lottery.errors import LotteryError, check_choice
from lottery.experiment.identity import leaves, trial_keys
from lottery.files import check_writable
from lottery.measure import robustness
from lottery.pruning import criteria
from lottery.pruning.modes import MODES, Mode, blocks_to_remove, resolved_rounds
from lottery.pruning.structures import SCOPES, STRUCTURES
from lottery.tracking import connection
from lottery.training import data, devices
from lottery.training.recipe import Recipe
from lottery.training.trainer import check_recipe


def check_keys(cfg: TrialConfig) -> None:
    """Each kind's group holds that kind's settings, and every key is one a schema declares (a
    key added with ``+``/``++`` that no kind reads is refused, not silently ignored)."""
    for registry in Registry.every:
        if registry.group:
            registry.check_config(cfg[registry.group])
    for leaf in leaves(cfg):
        if leaf.field is None:
            group, _, key = leaf.path.rpartition(".")
            known = sorted(f.name for f in dataclasses.fields(OmegaConf.get_type(cfg[group] if group else cfg)))
            raise LotteryError(f"{leaf.path} is not a key here; the keys of {group or 'the trial'} are "
                               f"{', '.join(known)}")


def check_run(cfg: TrialConfig) -> None:
    """How and where the trial runs: a seed, thread and job count it can use, and folders (and a
    tracking store) it can write."""
    if cfg.seed < 0:
        raise bad_value("seed", cfg.seed, "seeds are integers >= 0")
    if cfg.threads is not None and cfg.threads < 1:
        raise bad_value("threads", cfg.threads, "give a thread count >= 1, or null for torch's default")
    if cfg.jobs < 1:
        raise bad_value("jobs", cfg.jobs, "at least one trial runs")
    check_writable(cfg.paths.root, "paths.root")
    check_writable(cfg.store.root, "store.root")
    connection.check_uri(connection.tracking_uri(cfg.tracking, cfg.paths.root))


def validate(cfg: TrialConfig) -> networks.Anatomy:
    """Raise ``LotteryError`` for the first problem found in a composed trial config; else the
    anatomy of the dense network it describes (read from its skeleton: no memory, no init)."""
    check_keys(cfg)
    mode = MODES[cfg.mode.name]
    data.check(cfg.data)
    net = networks.check(cfg.model, data.shape_of(cfg.data))
    anatomy, name = networks.anatomy(net), networks.label(cfg.model)
    remove = blocks_to_remove(cfg.density, len(anatomy.removable)) if mode.prunes else 0
    criteria.check(cfg.criterion, cfg.data, mode.prunes, anatomy, name, remove)
    check_recipe(Recipe.of(cfg))
    mode.check(cfg, anatomy, name)
    structure = STRUCTURES[cfg.structure]
    check_choice("scope", cfg.scope, SCOPES)
    if mode.prunes:
        structure.check(cfg, net, name)
    robustness.check(cfg.robustness, cfg.data)
    devices.check_device(cfg.device)
    check_run(cfg)
    data.check_memory(cfg.data, devices.pick_device(cfg.device))
    return anatomy


@dataclass
class Design:
    """A trial's values derived from its config, which every step of the pipeline reads."""

    cfg: TrialConfig  # the composed, validated trial config
    mode: Mode
    anatomy: networks.Anatomy  # of the dense network
    device: torch.device
    keys: dict[str, str]  # cell_key and config_key (lottery.experiment.identity)
    rewind: int  # the epoch i the ticket rewinds to (0 unless the mode rewinds)
    remove: int  # blocks the ticket loses (0 for the dense reference)
    rounds: int  # in which they go (prune.rounds resolved: 0 is one block per round)

    @property
    def model_name(self) -> str:
        return networks.label(self.cfg.model)

    @property
    def precision(self) -> str:
        """What ``train.amp`` resolves to on the trial's device: bf16 or fp32."""
        return devices.precision(self.device, self.cfg.train.amp)

    @property
    def kept_rewind(self) -> int | None:
        """The rewind point theta_i the ticket starts from, when it starts from one."""
        return self.mode.kept_rewind(self.rewind)


def derive(cfg: TrialConfig, job: int = 0, worker_precision: str | None = None) -> Design:
    """Validate the config (one line for any mistake) and derive the rest (``job``: the trial's
    number in a multirun, which places it on one of the box's GPUs; ``worker_precision``: what
    ``amp`` resolves to where the trial will run, when that is not this machine)."""
    anatomy = validate(cfg)
    mode = MODES[cfg.mode.name]
    device = devices.pick_device(cfg.device, job)
    remove = blocks_to_remove(cfg.density, len(anatomy.removable)) if mode.prunes else 0
    keys = trial_keys(cfg, data.fingerprint(cfg.data), worker_precision or devices.precision(device, cfg.train.amp))
    return Design(cfg, mode, anatomy, device, keys, mode.rewind_epoch(cfg), remove, resolved_rounds(cfg, remove))
