"""Early stopping on the validation split, stage by stage, with each stage's best weights restored.

After each evaluation the watched value v (``metric`` of ``of`` on ``val``) is compared with the best so
far *in the current stage*: it improves when v > best + min_delta (accuracies) or v < best − min_delta
(nll). ``of: mean`` averages the members the stage trains (its ensemble members: a distillation
teacher stage watches the teachers, the distillation stage the students). The best weights are
written to ``best.safetensors`` in the run directory (so a resumed run keeps them); after ``patience``
evaluations in a row without improvement the stage ends, its best weights are loaded back into every
member, and training goes on with the next stage (a greedy run's next block, a distillation run's
students). Epochs of different stages are never compared: each stage trains other weights, often
towards another target.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from peerlearn.config import EarlyStoppingConfig
from peerlearn.engine.checkpoint import load_weights, save_weights
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.engine.trainer import Callback
from peerlearn.run_files import BEST_WEIGHTS_NAME



class EarlyStopping(Callback):
    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.stage: Optional[int] = None  # index of the stage the state below belongs to
        self.stage_name: Optional[str] = None
        self.watched_members: Optional[list[str]] = None  # the stage's trained members (for ``of: mean``)
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None  # global epoch of the stage's best evaluation
        self.best_stage_epoch: Optional[int] = None  # the same, counted within the stage (1-based)
        self.wait = 0
        self.stopped_epoch: Optional[int] = None
        self.stages: dict[str, dict[str, Any]] = {}  # finished stages: name -> their result

    @property
    def higher_is_better(self) -> bool:
        return self.config.metric != "nll"

    def watched(self, results: dict[str, Any]) -> Optional[float]:
        """The monitored number in one evaluation's results, or None when it has no validation scores."""
        scores = results.get("val")
        if not scores:
            return None
        metric, of = self.config.metric, self.config.of
        if of == "mean":
            members = [n for n in scores if n != ENSEMBLE]
            if self.watched_members is not None:
                members = [n for n in members if n in self.watched_members] or members
            values = [scores[n][metric] for n in members if metric in scores[n]]
            return statistics.mean(values) if values else None
        entry = scores.get(of)
        return None if entry is None else entry.get(metric)

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.higher_is_better:
            return value > self.best + self.config.min_delta
        return value < self.best - self.config.min_delta

    def on_stage_start(self, trainer, index: int, stage) -> None:
        """A new stage starts from nothing; a stage resumed after it had stopped ends at once."""
        self.watched_members = list(stage.ensemble_members) if stage.ensemble_members else \
            [m.name for m in trainer.cohort.trainable]
        if self.stage != index:
            self.stage, self.stage_name = index, stage.name
            self.best = self.best_epoch = self.best_stage_epoch = self.stopped_epoch = None
            self.wait = 0
        elif self.stopped_epoch is not None:
            trainer.stage_done = True

    def on_epoch_end(self, trainer, results: dict[str, Any]) -> None:
        value = self.watched(results)
        if value is None:
            return
        if self.improves(value):
            self.best, self.wait = value, 0
            self.best_epoch, self.best_stage_epoch = trainer.position.global_epoch, trainer.position.epoch
            if self.config.restore_best:
                save_weights(trainer.run_dir / BEST_WEIGHTS_NAME, {m.name: m.model for m in trainer.cohort.saved})
            return
        self.wait += 1
        if self.wait >= self.config.patience:
            self.stopped_epoch = trainer.position.global_epoch
            trainer.stage_done = True

    def on_stage_end(self, trainer, index: int, stage) -> None:
        """Load the stage's best weights back (they were saved during this stage only)."""
        restored = self.restore(trainer)
        if self.stage_name is not None:
            self.stages[self.stage_name] = {**self._current(), "restored_best": restored}

    def restore(self, trainer) -> bool:
        path = trainer.run_dir / BEST_WEIGHTS_NAME
        if not self.config.restore_best or self.best_epoch is None or not path.is_file():
            return False
        for member in trainer.cohort.saved:
            member.model.load_state_dict(load_weights(path, member.name))
        return True

    def _current(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "stage_epoch": self.best_stage_epoch,
                "stopped_epoch": self.stopped_epoch}

    def summary(self) -> dict[str, Any]:
        """The last stage's result at the top (which stage, which epoch won), every stage's under ``stages``."""
        last = self.stages.get(self.stage_name or "", {**self._current(), "restored_best": False})
        return {"metric": f"val/{self.config.of}/{self.config.metric}", "stage": self.stage_name, **last,
                "stages": self.stages}

    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage_name": self.stage_name, "best": self.best, "best_epoch": self.best_epoch,
                "best_stage_epoch": self.best_stage_epoch, "wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "stages": self.stages}

    def load_state_dict(self, state: dict) -> None:
        for key in ("stage", "stage_name", "best", "best_epoch", "best_stage_epoch", "wait", "stopped_epoch",
                    "stages"):
            if key in state:
                setattr(self, key, state[key])
