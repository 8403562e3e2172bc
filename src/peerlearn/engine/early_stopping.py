"""Early stopping on the validation split, with the best evaluation's weights restored at the end.

After each evaluation the watched value v (``metric`` of ``of`` on ``val``) is compared with the best so
far: it improves when v > best + min_delta (accuracies) or v < best − min_delta (nll). The best weights
are written to ``best.safetensors`` in the run directory (so a resumed run keeps them); after
``patience`` evaluations in a row without improvement the trainer stops, and at the end of the fit the
best weights are loaded back into every member.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

from peerlearn.config import EarlyStoppingConfig
from peerlearn.engine.checkpoint import load_weights, save_weights
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.engine.trainer import Callback

BEST_WEIGHTS_NAME = "best.safetensors"


class EarlyStopping(Callback):
    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.wait = 0
        self.stopped_epoch: Optional[int] = None

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
            values = [s[metric] for name, s in scores.items() if name != ENSEMBLE and metric in s]
            return statistics.mean(values) if values else None
        entry = scores.get(of)
        return None if entry is None else entry.get(metric)

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.higher_is_better:
            return value > self.best + self.config.min_delta
        return value < self.best - self.config.min_delta

    def on_epoch_end(self, trainer, results: dict[str, Any]) -> None:
        value = self.watched(results)
        if value is None:
            return
        if self.improves(value):
            self.best, self.best_epoch, self.wait = value, trainer.position.global_epoch, 0
            if self.config.restore_best:
                save_weights(trainer.run_dir / BEST_WEIGHTS_NAME, {m.name: m.model for m in trainer.cohort})
            return
        self.wait += 1
        if self.wait >= self.config.patience:
            self.stopped_epoch = trainer.position.global_epoch
            trainer.stop_requested = True

    def on_fit_end(self, trainer) -> None:
        path = trainer.run_dir / BEST_WEIGHTS_NAME
        if not self.config.restore_best or not path.is_file():
            return
        for member in trainer.cohort:
            member.model.load_state_dict(load_weights(path, member.name))

    def summary(self) -> dict[str, Any]:
        return {"metric": f"val/{self.config.of}/{self.config.metric}", "best": self.best,
                "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch,
                "restored_best": self.config.restore_best and self.best_epoch is not None}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        for key in ("best", "best_epoch", "wait", "stopped_epoch"):
            if key in state:
                setattr(self, key, state[key])
