"""The training recipe as one value: the loop's settings (``train``), the optimizer (``optim``) and
the learning-rate schedule (``schedule``), each a typed group of the trial config. What a training
job, a cost measurement and a fast-path timing read, so each trains as the trial does."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from omegaconf import OmegaConf

from lottery.config import OptimConfig, ScheduleConfig, TrainConfig
from lottery.training.optimizers import OPTIMIZERS
from lottery.training.schedules import SCHEDULES


@dataclass(frozen=True)
class Recipe:
    train: TrainConfig
    optim: OptimConfig
    schedule: ScheduleConfig

    @classmethod
    def of(cls, cfg) -> "Recipe":
        """A trial config's recipe."""
        return cls(cfg.train, cfg.optim, cfg.schedule)

    @classmethod
    def standalone(cls, optim: str = "sgd", schedule: str = "step", **values) -> "Recipe":
        """A recipe outside a composed trial config (benchmarks, tests): the kinds named, each value
        given to the group that declares it (``milestones`` to the step schedule), all structured
        together so a default that reads ``train.epochs`` resolves."""
        kinds = {"train": TrainConfig, "optim": OPTIMIZERS.settings_of(optim),
                 "schedule": SCHEDULES.settings_of(schedule)}
        groups: dict[str, dict] = {"train": {}, "optim": {"name": optim}, "schedule": {"name": schedule}}
        for key, value in values.items():
            group = next((g for g, c in kinds.items() if key in {f.name for f in fields(c)}), None)
            if group is None:
                raise TypeError(f"no recipe group declares {key} (train, optim={optim}, schedule={schedule})")
            groups[group][key] = value
        root = OmegaConf.structured({g: kinds[g](**v) for g, v in groups.items()})
        return cls(root.train, root.optim, root.schedule)

    def with_train(self, train: TrainConfig) -> "Recipe":
        """The same optimizer and schedule around other loop settings (a fast path's layout, say)."""
        return replace(self, train=train)

    def summary(self) -> str:
        """The recipe in one line (the runs' ``recipe`` tag, the report's environment), e.g. ``adamw
        (lr 0.001, weight_decay 0.1, betas [0.9, 0.95], eps 1e-08) + cosine (floor 0.0), warm-up 0.1, clip 1``."""
        def own(node) -> str:
            values = OmegaConf.to_container(node, resolve=True)
            return ", ".join(f"{k} {v}" for k, v in values.items()
                             if k not in ("name", "rewind_state") and v is not None)

        t, parts = self.train, [f"{self.optim.name} ({own(self.optim)}) + {self.schedule.name} ({own(self.schedule)})"]
        if t.warmup_epochs:
            parts.append(f"warm-up {t.warmup_epochs:g}")
        if t.clip_norm is not None:
            parts.append(f"clip {t.clip_norm:g}")
        return ", ".join(parts)

    @property
    def peak_lr(self) -> float:
        """The rate the warm-up rises to: ``optim.lr``, scaled to the batch when it is given per
        ``optim.lr_batch`` images (DeiT's 5e-4 per 512)."""
        o = self.optim
        return o.lr * (self.train.batch_size / o.lr_batch if o.lr_batch else 1.0)
