"""Validation at the door: every mistake a user can make, said in one line, before any work.

Each registry checks its own settings (a data source, a mode, a criterion, a structure, the
recipe, the shifted sets); this module only asks each of them in turn.
"""

from __future__ import annotations

from lottery import criteria, data, robustness
from lottery.errors import bad_value, check_choice
from lottery.models import Plan, resnet_plan
from lottery.modes import MODES
from lottery.pruning import SCOPES, STRUCTURES
from lottery.train import check_device, check_recipe


def plan_of(model_cfg) -> Plan:
    try:
        return resnet_plan(model_cfg.depth, model_cfg.shortcut.value)
    except ValueError as e:
        raise bad_value("model.depth", model_cfg.depth, str(e)) from None


def validate(cfg) -> None:
    """Raise ``LotteryError`` for the first problem found in a composed trial config."""
    check_choice("mode", cfg.mode.name, MODES)
    mode = MODES[cfg.mode.name]
    data.check(cfg.data)
    criteria.check(cfg.criterion, cfg.data, mode.prunes)
    plan = plan_of(cfg.model)
    check_recipe(cfg.train)
    mode.check(cfg, plan)
    check_choice("structure", cfg.structure, STRUCTURES)
    check_choice("scope", cfg.scope, SCOPES)
    if mode.prunes:
        STRUCTURES[cfg.structure].check(cfg, plan)
    robustness.check(cfg.robustness)
    check_device(cfg.device)
    if cfg.jobs < 1:
        raise bad_value("jobs", cfg.jobs, "at least one trial runs")
