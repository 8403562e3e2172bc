"""Cohort, trainer, checkpoints, optimizers: the machinery every recipe shares."""

from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.trainer import Callback, Stage, Trainer

__all__ = ["Callback", "Cohort", "Member", "Stage", "Trainer"]
