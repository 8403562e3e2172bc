"""The one training loop: stages of epochs over a cohort, with evaluation, logging and checkpoints.

Recipes never write a loop. They hand the trainer a list of ``Stage``s; a stage names how many
epochs it runs and a ``step(batch)`` function that does one optimisation step of the cohort
(forward, loss, backward, optimizer steps) and returns the numbers to log.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from peerlearn.config import RunConfig
from peerlearn.data.batches import Batch, BatchStream
from peerlearn.engine.checkpoint import load_state, rng_state, save_state, save_weights, set_rng_state
from peerlearn.engine.cohort import Cohort
from peerlearn.engine.epoch_log import log_epoch, log_final, logger
from peerlearn.engine.evaluation import evaluate_cohort
from peerlearn.engine.guards import check_weights_finite, fresh_settings, refresh_hyperparameters, restart_schedule
from peerlearn.engine.resume import added_epochs
from peerlearn.engine.last_evaluation import LastEvaluation
from peerlearn.engine.preemption import StopSignals, preempted, requested_signal
from peerlearn.engine.run_record import RUN_RECORD_NAME, stage_record, write_run_record
from peerlearn.engine.tracking import MetricsLog, open_metrics_log
from peerlearn.errors import PeerlearnError, ResourceError, TrainingError
from peerlearn.progress import progress_enabled
from peerlearn.trust import record_files
from peerlearn.run_files import CHECKPOINT_NAME, WEIGHTS_NAME



@dataclass
class Stage:
    """A phase of training: ``epochs`` epochs of ``step`` over the training stream.

    ``start`` runs when the stage begins (or is resumed): freezing, building optimizers, caches.
    ``eval_members`` are scored each evaluation; ``ensemble_members`` form the cohort ensemble.
    """

    name: str
    epochs: int
    step: Callable[[Batch], dict[str, Any]]
    start: Optional[Callable[[], None]] = None
    eval_members: Optional[list[str]] = None
    ensemble_members: Optional[list[str]] = None
    train_stream: Optional[BatchStream] = None  # default: the trainer's training stream


@dataclass
class Position:
    """Where training stands: the stage, the epoch within it, the next step within the epoch."""

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    global_epoch: int = 0


class Callback:
    """Hooks around the loop. ``state_dict`` is saved in checkpoints so resumes continue exactly.

    Callbacks know the stage: ``on_stage_start`` runs when a stage begins or is resumed (after its
    ``start``), ``on_stage_end`` when it ends (its last epoch, or ``trainer.stage_done`` set by a callback).

    ``may_change_members``: set it to False in a callback that never changes a member's weights, modules or
    predictions; when every callback says so, the final summary may reuse the last epoch's evaluation
    (``engine.last_evaluation``) instead of scoring the same members again.
    """

    may_change_members: bool = True

    def on_stage_start(self, trainer: "Trainer", index: int, stage: Stage) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", results: dict[str, Any]) -> None: ...

    def on_stage_end(self, trainer: "Trainer", index: int, stage: Stage) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def check_finite(loss: torch.Tensor, member: str, trainer: Optional["Trainer"] = None) -> None:
    """Stop with a clear message when a loss is NaN or infinite (before any weight is touched)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        where = ""
        if trainer is not None:
            where = f" at {trainer.where()}; the last good checkpoint is {trainer.last_good_checkpoint()}"
        raise TrainingError(
            f"The loss of member {member!r} is not finite ({float(loss.detach().float().mean())}){where}. "
            "Lower the learning rate, check the inputs for NaN/inf, or resume from the checkpoint with other settings."
        )


class Trainer:
    def __init__(self, config: RunConfig, cohort: Cohort, stages: list[Stage], train_stream: BatchStream,
                 eval_streams: dict[str, BatchStream], run_dir: Path, callbacks: list[Callback] = (),
                 extra_state: Optional[Callable[[], dict]] = None,
                 load_extra_state: Optional[Callable[[dict], None]] = None,
                 describe_run: Optional[Callable[[], dict]] = None, distributed=None):
        self.config = config
        self.cohort = cohort
        self.stages = stages
        self.train_stream = train_stream
        self.eval_streams = eval_streams
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.position = Position()
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False  # end the whole fit after this epoch
        self.stage_done = False  # end the current stage after this epoch (early stopping)
        self.describe_run = describe_run  # the recipe's part of run.json (engine.run_record)
        self.extra_state = extra_state
        self.load_extra_state = load_extra_state
        self.log: Optional[MetricsLog] = None
        self.last_results: dict[str, Any] = {}
        self._last_evaluation: Optional[LastEvaluation] = None  # reused by the final summary when still valid
        self.elapsed = 0.0
        self.changes: list[dict[str, Any]] = []  # settings changed by `--resume --change` (engine.resume)
        self.restarts: list[dict[str, int]] = []  # schedules restarted over epochs added to a finished stage
        self.already_finished = False  # a resume found nothing left to train
        self.saved_step: Optional[int] = None  # global step of the checkpoint on disk, if any
        self._epoch_sums: dict[str, float] = {}  # running sums of the current epoch's logged values
        self._epoch_count = 0
        self._pending_member_state: Optional[dict] = None  # a restored checkpoint's optimizer/schedule states
        self._pending_rng: Optional[dict] = None  # its RNG states, set when its stage starts
        self._restart_now: Optional[dict[str, int]] = None  # the restart this resume makes (engine.resume)
        self.distributed = distributed  # a DistContext when this is one process of a distributed run

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run directory (every process of a single run is main)."""
        return self.distributed is None or self.distributed.is_main

    def _sync(self) -> None:
        """Distributed runs: bring every process's copy of every member up to date (collective)."""
        if self.distributed is not None:
            from peerlearn.engine.distributed import sync_cohort

            sync_cohort(self.distributed, self.cohort)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def where(self) -> str:
        """The current position in words, for error messages."""
        p = self.position
        return (f"global step {p.global_step + 1} (stage {p.stage}, epoch {p.epoch + 1}, "
                f"step {p.step_in_epoch + 1} of the epoch)")

    def last_good_checkpoint(self) -> str:
        """The checkpoint a resume would start from, in words."""
        if self.saved_step is None or not self.checkpoint_path.exists():
            return "none (nothing was saved yet)"
        return f"{str(self.checkpoint_path)!r} (global step {self.saved_step}; resume with --resume {self.run_dir})"

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        members = {}
        for member in self.cohort.saved:
            entry: dict[str, Any] = {"model": member.model.state_dict()}
            if member.optimizer is not None:
                entry["optimizer"] = member.optimizer.state_dict()
            if member.schedule is not None:
                entry["schedule"] = member.schedule.state_dict()
            members[member.name] = entry
        return {
            "format": 1,
            "position": vars(self.position).copy(),
            "members": members,
            "rng": rng_state(),
            "callbacks": [c.state_dict() for c in self.callbacks],
            "history": self.history,
            "epoch_progress": {"sums": dict(self._epoch_sums), "count": self._epoch_count},
            "elapsed": self.elapsed,
            "extra": self.extra_state() if self.extra_state else {},
            "config": self.config.model_dump(mode="json"),
            "changes": list(self.changes),
            "stage_epochs": self.stages[min(self.position.stage, len(self.stages) - 1)].epochs,
            "restarts": list(self.restarts),
            "run": self.run_record(finished=False),
        }

    def run_record(self, finished: bool) -> Optional[dict[str, Any]]:
        """run.json: the recipe's description of the run plus where training stands (engine.run_record)."""
        if self.describe_run is None:
            return None
        index = min(self.position.stage, len(self.stages) - 1)
        stage = self.stages[index]
        return {**self.describe_run(), "finished": finished,
                "stage": stage_record(index, stage.name, self.position.epoch, [s.name for s in self.stages]),
                "ensemble": list(stage.ensemble_members or [m.name for m in self.cohort.trainable]),
                "evaluated": list(stage.eval_members or self.cohort.evaluable)}

    def write_run_record(self, finished: bool) -> None:
        record = self.run_record(finished)
        if record is not None and self.is_main:
            write_run_record(self.run_dir, record)

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically (main process only); a failed write (full disk, ...) keeps the
        previous one."""
        check_weights_finite(self)  # never save (or go on from) inf/NaN weights or BatchNorm statistics
        if self.is_main:
            try:
                if self.log is not None:
                    self.log.flush()  # the logs hold everything up to this checkpoint
                state = self.state()
                save_state(self.checkpoint_path, state)
                if state["run"] is not None:
                    write_run_record(self.run_dir, state["run"])
                record_files(self.run_dir, CHECKPOINT_NAME, RUN_RECORD_NAME)  # their hashes, signed (trust.py)
            except OSError as error:
                raise ResourceError(
                    f"Cannot write the checkpoint {str(self.checkpoint_path)!r} at global step "
                    f"{self.position.global_step}: {error.strerror or error}. Nothing was replaced: the last good "
                    f"checkpoint is {self.last_good_checkpoint()}. Free disk space, then resume."
                ) from None
        self.saved_step = self.position.global_step
        if self.distributed is not None:
            self.distributed.barrier()

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's models and position; optimizers are loaded when their stage starts."""
        self.position = Position(**state["position"])
        for name, entry in state["members"].items():
            try:
                self.cohort[name].model.load_state_dict(entry["model"])
            except (KeyError, RuntimeError) as error:  # unknown member, missing keys, wrong shapes
                first = str(error).strip().splitlines()[0][:300]
                raise PeerlearnError(f"The checkpoint's weights of member {name!r} do not fit the run's model "
                                     f"({first}); the checkpoint belongs to another config.") from None
        self.changes = list(state.get("changes", []))
        self.restarts = list(state.get("restarts", []))
        extension = added_epochs(state, self.stages)
        if extension is not None:  # epochs added to a stage that had run all of its own: restart its schedule
            self.restarts.append(extension)
        self._restart_now = extension
        for callback, cstate in zip(self.callbacks, state.get("callbacks", [])):
            callback.load_state_dict(cstate)
        self.history = state.get("history", [])
        self.elapsed = state.get("elapsed", 0.0)
        progress = state.get("epoch_progress") or {}
        self._epoch_sums = dict(progress.get("sums", {}))
        self._epoch_count = int(progress.get("count", 0))
        self.saved_step = self.position.global_step
        if self.load_extra_state:
            self.load_extra_state(state.get("extra", {}))
        self._pending_member_state = state["members"]
        self._pending_rng = state["rng"]

    def _load_optimizers(self) -> None:
        pending = self._pending_member_state
        if not pending:
            return
        for name, entry in pending.items():
            member = self.cohort[name]
            fresh = fresh_settings(member)  # what the (possibly changed) config builds
            try:
                if member.optimizer is not None and "optimizer" in entry:
                    member.optimizer.load_state_dict(entry["optimizer"])
                if member.schedule is not None and "schedule" in entry:
                    member.schedule.load_state_dict(entry["schedule"])
            except (KeyError, ValueError, RuntimeError) as error:
                raise PeerlearnError(f"The checkpoint's optimizer state of member {name!r} does not fit the run "
                                     f"({error}); the checkpoint belongs to another config.") from None
            if self.changes:  # `--resume --change`: the new settings win over the saved ones
                restarted = any(r["stage"] == self.position.stage for r in self.restarts)
                refresh_hyperparameters(member, fresh, keep_schedule=restarted)
            if self._restart_now is not None and self._restart_now["stage"] == self.position.stage:
                restart_schedule(member, fresh, self._restart_now["epochs"])
        self._pending_member_state = None
        self._restart_now = None

    # ------------------------------------------------------------------ loop
    def fit(self, resume_from: Optional[Path] = None) -> dict[str, Any]:
        if resume_from is not None:
            self.restore(load_state(resume_from))
        resume_step = self.position.global_step if resume_from is not None else None
        if resume_from is not None:
            self._say_if_finished()
        self.log = (open_metrics_log(self.config, self.run_dir, resume_step=resume_step)
                    if self.is_main else _NullLog())
        self.signals = StopSignals().install()
        try:
            for stage_index in range(self.position.stage, len(self.stages)):
                stage = self.stages[stage_index]
                if stage.start is not None:
                    stage.start()
                for callback in self.callbacks:
                    callback.on_stage_start(self, stage_index, stage)
                self._load_optimizers()
                if self._pending_rng is not None:
                    set_rng_state(self._pending_rng)
                    self._pending_rng = None
                self._run_stage(stage_index, stage)
                if self.stop_requested:
                    break
                for callback in self.callbacks:
                    callback.on_stage_end(self, stage_index, stage)
                self.stage_done = False
                if stage_index == len(self.stages) - 1:
                    break  # the position stays in the last stage: the run ended in it
                self.position = Position(stage=stage_index + 1, global_step=self.position.global_step,
                                         global_epoch=self.position.global_epoch)
            for callback in self.callbacks:
                callback.on_fit_end(self)
            summary = self._final_summary()
        except KeyboardInterrupt:  # a second stop signal (or Ctrl-C outside the handlers): stop at once
            self._close_log(finished=False)
            raise preempted(self, self.signals.second or signal.SIGINT, saved=False) from None
        except OSError as error:  # disk full, I/O error: a metrics append, a TensorBoard flush, ...
            self._close_log(finished=False)
            raise ResourceError(f"A write failed at {self.where()}: {error.strerror or error} "
                                f"({getattr(error, 'filename', None) or 'run directory'}). The last good checkpoint "
                                f"is {self.last_good_checkpoint()}; free disk space, then resume.") from None
        except BaseException:
            self._close_log(finished=False)
            raise
        finally:
            self.signals.restore()
        try:
            self.log.close(final=summary.get("final"))
        except OSError as error:
            raise ResourceError(f"Cannot finish the metrics of {str(self.run_dir)!r}: {error.strerror or error}. "
                                f"The final weights are written; the last checkpoint is "
                                f"{self.last_good_checkpoint()}.") from None
        return summary

    def _say_if_finished(self) -> None:
        """A resumed run whose last stage has run all its epochs trains nothing: say so (``already_finished``)."""
        index = min(self.position.stage, len(self.stages) - 1)
        stage = self.stages[index]
        if index == len(self.stages) - 1 and self.position.epoch >= stage.epochs and self.position.step_in_epoch == 0:
            self.already_finished = True
            if self.is_main:
                logger.warning(f"The run {str(self.run_dir)!r} had already finished: its last stage "
                               f"({stage.name!r}) has run all its {stage.epochs} epochs, so nothing is trained. To "
                               f"train more epochs: --resume {self.run_dir} --change train.epochs=N (N > "
                               f"{stage.epochs}; the schedule restarts over the added epochs).")

    def _close_log(self, finished: bool) -> None:
        """Close the metrics sinks on the way out of a failed run, without hiding the first error."""
        try:
            self.log.close(finished=finished)
        except Exception:
            pass

    def _stop_if_signalled(self, at_epoch_end: bool) -> None:
        """SIGTERM/SIGINT arrived: checkpoint this position (unless just done) and stop (see preemption.py)."""
        signum = requested_signal(self)
        if signum is None:
            return
        if not at_epoch_end:
            self._sync()
            self.save_checkpoint()
        raise preempted(self, signum, saved=True)

    def _run_stage(self, stage_index: int, stage: Stage) -> None:
        stream = stage.train_stream or self.train_stream
        show = progress_enabled(self.config.train.progress)
        while self.position.epoch < stage.epochs and not self.stop_requested and not self.stage_done:
            epoch = self.position.epoch
            started = epoch_started = time.perf_counter()
            self.cohort.train()
            if self.position.step_in_epoch == 0:
                self._epoch_sums, self._epoch_count = {}, 0
            sums = self._epoch_sums
            bar = tqdm(total=len(stream), initial=self.position.step_in_epoch, disable=not show, leave=False,
                       desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", dynamic_ncols=True)
            for step, batch in stream.epoch(self.position.global_epoch, start_step=self.position.step_in_epoch):
                self._check_inputs(batch, stream)
                values = stage.step(batch)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                self._epoch_count += 1
                count = self._epoch_count
                self.position.step_in_epoch = step + 1
                self.position.global_step += 1
                self.log.log_step(self.position.global_step, self.position.global_epoch + (step + 1) / len(stream),
                                  stage.name, values, self.cohort)
                bar.update(1)
                if count % 10 == 0 and "loss" in values:
                    bar.set_postfix(loss=f"{float(values['loss']):.4f}")
                every = self.config.train.checkpoint_every_steps
                if every and self.position.global_step % every == 0 and self.position.step_in_epoch < len(stream):
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    self._sync()
                    self.save_checkpoint()
                if self.position.step_in_epoch < len(stream):  # the epoch's end checkpoints by itself
                    self._stop_if_signalled(at_epoch_end=False)
            bar.close()
            # a distributed process steps only the schedule of the member it trains (stepping one whose optimizer
            # never stepped here is what torch warns about); the sync then brings every copy up to date
            self.cohort.step_schedules("epoch", None if self.distributed is None else [self.distributed.member_name])
            self._sync()
            self.elapsed += time.perf_counter() - started
            train_means = {k: v / max(self._epoch_count, 1) for k, v in sums.items()}
            lrs = {m.name: m.optimizer.param_groups[0]["lr"] for m in self.cohort.updating}
            self.log.log("train", self.position.global_step, self.position.global_epoch + 1,
                         {"stage": stage.name, **train_means, "lr": lrs})
            self.position.epoch += 1
            self.position.global_epoch += 1
            self.position.step_in_epoch = 0
            last_epoch = self.position.epoch == stage.epochs
            results = None
            if last_epoch or self.position.epoch % self.config.train.eval_every == 0:
                results = self.evaluate(stage)
                self.last_results = results
                self._last_evaluation = LastEvaluation.take(stage, self.position.global_step, results, self.cohort)
                record = {"stage": stage.name, "epoch": self.position.global_epoch, "train": train_means, **results}
                self.history.append(record)
                self.log.log("eval", self.position.global_step, self.position.global_epoch,
                             {"stage": stage.name, **results})
                for callback in self.callbacks:
                    callback.on_epoch_end(self, results)
            if self.is_main:
                log_epoch(stage.name, self.position.epoch, stage.epochs, train_means, results,
                          time.perf_counter() - epoch_started)
            self.save_checkpoint()
            self._stop_if_signalled(at_epoch_end=True)

    def _check_inputs(self, batch: Batch, stream: BatchStream) -> None:
        """Refuse a batch holding NaN/inf inputs before any member sees it."""
        if not bool(torch.isfinite(batch.x).all()):
            bad = (~torch.isfinite(batch.x.reshape(len(batch.x), -1))).any(1).nonzero().flatten()
            items = batch.index[bad].tolist()[:5]
            raise TrainingError(
                f"The training inputs hold NaN or inf at {self.where()}: items {items} of the training split; "
                f"no member (of {', '.join(self.cohort.names)}) was updated with them. The last good checkpoint is "
                f"{self.last_good_checkpoint()}. Check the dataset (and data.normalize) for non-finite values."
            )

    def evaluate(self, stage: Stage, splits: Optional[list[str]] = None) -> dict[str, Any]:
        names = stage.eval_members or self.cohort.evaluable
        ensemble = stage.ensemble_members or [m.name for m in self.cohort.trainable]
        splits = splits or [s for s in ("val", "test") if s in self.eval_streams
                            and (s != "test" or self.config.train.eval_test)]
        return {split: evaluate_cohort(self.cohort, self.eval_streams[split], names, ensemble,
                                       progress=self.config.train.progress) for split in splits
                if len(self.eval_streams[split].split) > 0}

    def _final_summary(self) -> dict[str, Any]:
        stage = self.stages[min(self.position.stage, len(self.stages) - 1)]
        splits = [s for s in ("val", "test") if s in self.eval_streams]
        known = {} if self._last_evaluation is None else self._last_evaluation.reusable(
            stage, self.position.global_step, self.callbacks, self.cohort)
        missing = [s for s in splits if s not in known]
        scored = {**known, **(self.evaluate(stage, missing) if missing else {})}
        final = {s: scored[s] for s in splits if s in scored}
        check_weights_finite(self)
        if self.is_main:
            try:
                save_weights(self.run_dir / WEIGHTS_NAME, {m.name: m.model for m in self.cohort.saved})
                self.write_run_record(finished=True)
                record_files(self.run_dir, WEIGHTS_NAME, RUN_RECORD_NAME)
            except OSError as error:
                raise ResourceError(
                    f"Cannot write the final weights {str(self.run_dir / WEIGHTS_NAME)!r}: {error.strerror or error}. "
                    f"The last good checkpoint is {self.last_good_checkpoint()}; free disk space and resume."
                ) from None
            log_final(final)
        return {"final": final, "steps": self.position.global_step, "epochs": self.position.global_epoch,
                "train_seconds": round(self.elapsed, 3)}


class _NullLog:
    """The metrics log of a non-main process of a distributed run: writes nothing."""

    def log(self, *args, **kwargs) -> None: ...

    def log_step(self, *args, **kwargs) -> None: ...

    def flush(self) -> None: ...

    def close(self, *args, **kwargs) -> None: ...


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
