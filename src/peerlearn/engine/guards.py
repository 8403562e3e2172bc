"""Checks on the cohort's state between steps: divergence in the weights, and new settings on resume.

``check_weights_finite`` looks at every floating-point parameter and buffer of every member (BatchNorm
running statistics included) each time a checkpoint or the final weights are about to be written:
one ``isfinite`` pass over the weights, cheap next to an epoch. A loss can stay finite while a
BatchNorm running variance has become inf (the normalisation hides it in training mode); the check
catches that before the bad state replaces the last good checkpoint.

``refresh_hyperparameters`` serves ``peerlearn train --resume RUN_DIR --change KEY=VALUE``: the
optimizer and schedule states are loaded from the checkpoint (momentum, Adam moments, progress), then
the settings a changed config builds (lr, weight decay, momentum, schedule length, ...) replace the
saved ones. The current lr is rescaled by new base lr / old base lr, so a decayed lr stays decayed.

``restart_schedule`` serves epochs added to a stage that had already run all its epochs (a finished run
resumed with ``--change train.epochs=N``): its schedule had ended (a cosine at ``min_lr``, often 0), so going on
with it would train at that lr. The added epochs get the schedule restarted over them from the base lr instead.
"""

from __future__ import annotations

from typing import Any

import torch

from peerlearn.errors import TrainingError

SCHEDULE_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial")


def check_weights_finite(trainer) -> None:
    """Raise ``TrainingError`` (exit 3) naming member and tensor when a weight or buffer is NaN/inf."""
    for member in trainer.cohort.saved:
        buffers = {name for name, _ in member.model.named_buffers()}
        for name, tensor in member.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                kind = "buffer" if name in buffers else "parameter"
                bad = int((~torch.isfinite(tensor)).sum())
                raise TrainingError(
                    f"The weights of member {member.name!r} diverged: {bad} values of the {kind} {name!r} are NaN "
                    f"or inf after global step {trainer.position.global_step} (epoch {trainer.position.global_epoch + 1}). "
                    f"Nothing was saved over the last good checkpoint, "
                    f"{trainer.last_good_checkpoint()}. Lower the learning rate (resume with --change optim.lr=...) "
                    "or start again with other settings."
                )


def fresh_settings(member) -> dict[str, Any]:
    """The optimizer groups and schedule state that the current config built, before a checkpoint is loaded."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in member.optimizer.param_groups] \
        if member.optimizer is not None else []
    schedule = member.schedule.state_dict() if member.schedule is not None else {}
    return {"groups": groups, "schedule": dict(schedule)}


def restart_schedule(member, fresh: dict[str, Any], epochs: int) -> None:
    """Epochs added to a stage that had finished (``--resume --change train.epochs=N``): every optimizer group
    back at its base lr (the current config's, ``fresh``), and the schedule built anew over the ``epochs`` added
    ones, as if a run of that many epochs started here (the optimizer's state, e.g. momentum, is kept)."""
    optimizer = member.optimizer
    if optimizer is None or member.schedule is None or len(optimizer.param_groups) != len(fresh["groups"]):
        return
    for group, new in zip(optimizer.param_groups, fresh["groups"]):
        base = new.get("initial_lr", new["lr"])
        group["lr"] = base
        group["initial_lr"] = base
    member.schedule = member.schedule.restarted(optimizer, epochs)


def refresh_hyperparameters(member, fresh: dict[str, Any], keep_schedule: bool = False) -> None:
    """Keep the loaded optimizer/schedule progress, take every setting from ``fresh`` (the new config);
    ``keep_schedule``: the loaded schedule's own settings too (a schedule restarted over added epochs)."""
    optimizer = member.optimizer
    if optimizer is None or len(optimizer.param_groups) != len(fresh["groups"]):
        return
    for group, new in zip(optimizer.param_groups, fresh["groups"]):
        old_base = group.get("initial_lr", None)
        new_base = new.get("initial_lr", None)
        if old_base and new_base:
            group["lr"] = group["lr"] * (new_base / old_base)
        else:
            group["lr"] = new["lr"]
        for key, value in new.items():
            if key != "lr":
                group[key] = value
    if member.schedule is not None and fresh["schedule"] and not keep_schedule:
        loaded = member.schedule.state_dict()
        merged = {**fresh["schedule"], **{k: loaded[k] for k in SCHEDULE_PROGRESS if k in loaded}}
        if "_last_lr" in merged:
            merged["_last_lr"] = [g["lr"] for g in optimizer.param_groups]
        member.schedule.load_state_dict(merged)
