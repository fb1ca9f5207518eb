"""Validation at the door: every mistake a user can make, said in one line, before any work.

Each registry checks its own settings (a data source, a model family, a mode, a criterion, a
structure, the recipe, the shifted sets); this module only asks each of them in turn.
"""

from __future__ import annotations

from lottery import criteria, data, models, robustness
from lottery.errors import bad_value, check_choice
from lottery.modes import MODES
from lottery.pruning import SCOPES, STRUCTURES
from lottery.devices import check_device, pick_device
from lottery.train import check_recipe


def validate(cfg) -> models.Anatomy:
    """Raise ``LotteryError`` for the first problem found in a composed trial config; else the
    anatomy of the dense network it describes (read from its skeleton: no memory, no init)."""
    check_choice("mode", cfg.mode.name, MODES)
    mode = MODES[cfg.mode.name]
    data.check(cfg.data)
    net = models.check(cfg.model, data.shape_of(cfg.data))
    anatomy, name = models.anatomy(net), models.label(cfg.model)
    criteria.check(cfg.criterion, cfg.data, mode.prunes, anatomy, name)
    check_recipe(cfg.train)
    mode.check(cfg, anatomy, name)
    check_choice("structure", cfg.structure, STRUCTURES)
    check_choice("scope", cfg.scope, SCOPES)
    if mode.prunes:
        STRUCTURES[cfg.structure].check(cfg, net, name)
    robustness.check(cfg.robustness)
    check_device(cfg.device)
    data.check_memory(cfg.data, pick_device(cfg.device))
    if cfg.jobs < 1:
        raise bad_value("jobs", cfg.jobs, "at least one trial runs")
    return anatomy
