"""The structure contract and its registry: what a trial removes from the network its mode scores
(whole blocks, filters, or both), chosen from criterion scores, given back as a ``Pruning`` — a
record of what was scored and removed plus the surgery that builds the ticket. A structure
checks the settings it reads at the door (``check``), before any work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from torch import nn

from lottery.config import Registry, TrialConfig, bad_value
from lottery.pruning.criteria import ScoringSet


@dataclass
class Pruning:
    apply: Callable[[nn.Module], nn.Module]  # builds the ticket from a network of the dense architecture
    record: dict  # what was scored and removed (logged as an artifact)
    metrics: dict  # logged with the ticket's metrics
    label: str  # for the run name, e.g. "p2" or "p1-filter"
    artifact: str  # file name of ``record`` in the run's artifacts
    summary: str  # one line for the log
    tags: dict = field(default_factory=dict)  # logged with the ticket's tags (e.g. ties that block order decided)


@dataclass(frozen=True)
class Request:
    """What a structure is asked to remove from a network scored at some weights."""

    cfg: TrialConfig  # (criterion, seed, scope, target_filters, match)
    count: int  # blocks to remove (a filter or joint ticket: the layer ticket's)
    model: nn.Module  # the network at the weights the mode scores on
    scoring: ScoringSet | None
    rounds: int = 1  # re-scoring rounds at these weights (prune.rounds at initialization)


class Structure(ABC):
    """One kind of unit a ticket loses. A subclass names itself, removes its units (``prune``) and
    checks the settings it reads (``check``, extending this one)."""

    name: ClassVar[str]  # the value of ``structure=``
    rounds: ClassVar[bool] = False  # removes its units over prune.rounds; else in one pass

    @abstractmethod
    def prune(self, req: Request) -> Pruning:
        """Choose the units of ``req.model`` to remove (scoring them with ``req.cfg.criterion``),
        and the record and surgery that build the ticket from a network of the dense architecture."""

    def check(self, cfg: TrialConfig, net: nn.Module, name: str) -> None:
        """Raise ``LotteryError`` (one line) for settings this structure cannot honour, given the
        dense network's skeleton ``net`` and its label ``name``: before any work."""
        if not self.rounds and cfg.prune.rounds != 1:
            raise bad_value("prune.rounds", cfg.prune.rounds, f"structure={cfg.structure} removes its units in one "
                                                              "pass; rounds are for structure=layer")


STRUCTURES: Registry[Structure] = Registry("structure")
SCOPES = ("global", "layerwise")  # how filters are ranked: across the network, or within each convolution
NOTES = ("weights", "ties")  # what a record says about its choice without deciding it


def decisive(record: dict) -> dict:
    """A pruning record less its notes (the weights scored, the ties block order broke): what
    the resumable state of a ticket is keyed on, so notes added later never orphan it."""
    out = {k: v for k, v in record.items() if k not in NOTES}
    if "rounds" in out:
        out["rounds"] = [decisive(r) for r in out["rounds"]]
    return out
