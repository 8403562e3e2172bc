"""Where a run's numbers go: ``metrics.jsonl`` (one JSON object per line), TensorBoard events and,
when ``tracking.mlflow`` is on, MLflow: a SQLite file ``mlflow.db`` in the run directory (``true``) or any
MLflow tracking URI that many runs share (a SQLite file, a tracking server, a folder)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from peerlearn.engine.checkpoint import atomic_write
from peerlearn.engine.run_dir import open_append
from peerlearn.errors import ConfigError, ResourceError
from peerlearn.run_files import METRICS_NAME, TENSORBOARD_DIR

MLFLOW_DB = "mlflow.db"
MLFLOW_RUN_ID = "mlflow_run_id.txt"
MLFLOW_EXPERIMENT = "peerlearn"


class MetricsLog:
    """Append-only JSON-lines log plus optional TensorBoard scalars (and MLflow).

    Records are ``{"kind": "train" | "eval" | "step", "step": global step, "epoch": ..., ...}``: ``train`` holds an
    epoch's mean loss terms and each member's learning rate, ``eval`` the evaluation, ``step`` the loss terms
    and learning rates of a single optimisation step, every ``log_every_steps`` steps (0: none).

    ``flush`` (called before every checkpoint is written) puts everything logged so far on disk, so a killed
    run's log is complete up to its last checkpoint. On resume from a checkpoint at step S, the lines and
    TensorBoard events of steps > S are dropped, so the log reads as if the run had never stopped: no duplicate
    step and no hole. When the run finishes, its hyper-parameters (the flattened config) and final metrics are
    written as TensorBoard hparams (``final/<split>/<member>/<metric>`` scalars) and MLflow metrics.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: Optional[int] = None,
                 mlflow: Optional["MlflowLogger"] = None, log_every_steps: int = 0,
                 hparams: Optional[dict[str, Any]] = None):
        self.path = Path(run_dir) / METRICS_NAME
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if (record := _parse(line)) is not None and record.get("step", 0) <= resume_step]
            # atomically: a process killed during this rewrite must not lose the log
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
        self.handle = open_append(self.path)  # never through a planted link
        self.writer = None
        if tensorboard:
            from peerlearn.engine.tb_events import EventWriter, truncate_events  # tensorboardX only when used

            log_dir = Path(run_dir) / TENSORBOARD_DIR
            if resume_step is not None:
                truncate_events(log_dir, resume_step)
            self.writer = EventWriter(log_dir)
        self.extra_loggers: list[Any] = []
        self.mlflow = mlflow
        self.log_every_steps = log_every_steps
        self.hparams = hparams or {}

    def log(self, kind: str, step: int, epoch: float, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, "epoch": epoch, **values}
        self.handle.write(json.dumps(record) + "\n")
        scalars = dict(_flat(values))
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        for logger in self.extra_loggers:
            logger.log(kind, step, scalars)
        if self.mlflow is not None:
            self.mlflow.log(kind, step, scalars)

    def log_step(self, step: int, epoch: float, stage: str, values: dict[str, Any], cohort) -> None:
        """A ``step`` record of one optimisation step's loss terms and every trainable member's learning rate,
        when ``step`` is a multiple of ``log_every_steps``."""
        if not self.log_every_steps or step % self.log_every_steps:
            return
        lrs = {m.name: m.optimizer.param_groups[0]["lr"] for m in cohort.updating}
        self.log("step", step, round(epoch, 6), {"stage": stage, **{k: float(v) for k, v in values.items()},
                                                 "lr": lrs})

    def flush(self) -> None:
        """Put every record logged so far into the files (before a checkpoint is written)."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        if self.writer is not None:
            self.writer.flush()

    def close(self, finished: bool = True, final: Optional[dict[str, Any]] = None) -> None:
        """Close every sink; ``finished=False`` marks the MLflow run as failed. ``final`` (the final
        evaluation, ``{split: {member: {metric: value}}}``) is written with the hyper-parameters."""
        if finished and final:
            metrics = {f"final/{key}": value for key, value in _flat(final)}
            if self.writer is not None:
                write_hparams(self.writer, self.hparams, metrics)
            if self.mlflow is not None:
                self.mlflow.log("final", 0, {key.removeprefix("final/"): v for key, v in metrics.items()})
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
        for logger in self.extra_loggers:
            logger.close()
        if self.mlflow is not None:
            self.mlflow.close(finished)


def write_hparams(writer, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """TensorBoard's HParams view: the experiment, session start (hyper-parameters) and end summaries, and
    each metric as a scalar, all in the run's own event file (so ``tensorboard --logdir runs`` compares runs)."""
    from tensorboardX.summary import hparams as hparams_summaries

    for summary in hparams_summaries(hparams, metrics):  # experiment, session start, session end
        writer.add_summary(summary, 0)
    for key, value in metrics.items():
        writer.add_scalar(key, value, 0)


def hparam_values(tree: Any) -> dict[str, Any]:
    """The flattened config as TensorBoard hyper-parameters: numbers, booleans and strings kept as they are,
    lists and empty mappings as JSON text, unset (None) values left out."""
    values: dict[str, Any] = {}
    for key, text in flatten_params(tree).items():
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if value is None:
            continue
        values[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return values


def open_metrics_log(config, run_dir: Path, resume_step: Optional[int] = None) -> MetricsLog:
    """The run's ``MetricsLog`` with the sinks ``config.tracking`` turns on."""
    tree = config.model_dump(mode="json")
    mlflow = None
    if config.tracking.mlflow:
        uri = config.tracking.mlflow if isinstance(config.tracking.mlflow, str) else None
        mlflow = MlflowLogger(run_dir, flatten_params(tree), run_name=Path(run_dir).name,
                              resume=resume_step is not None, uri=uri, experiment=config.tracking.mlflow_experiment)
    return MetricsLog(run_dir, config.tracking.tensorboard, resume_step=resume_step, mlflow=mlflow,
                      log_every_steps=config.tracking.log_every_steps, hparams=hparam_values(tree))


# --------------------------------------------------------------------------- MLflow
def require_mlflow():
    """The ``MlflowClient`` class, or a ConfigError telling how to install the ``mlflow`` extra."""
    try:
        import sqlalchemy  # noqa: F401  (MLflow's SQLite store needs it and alembic)
        import alembic  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ConfigError(f"Invalid config: key 'tracking.mlflow' is true, but MLflow cannot be used here "
                          f"({error}). Install it with pip install 'peerlearn[mlflow]', or set "
                          "tracking.mlflow=false.") from None
    return MlflowClient


def flatten_params(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}, "members": [{"model": "mlp"}]}`` -> ``{"optim.lr": "0.1", "members.0.model": "mlp"}``."""
    flat: dict[str, str] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None or (not tree and prefix):
        flat[prefix] = json.dumps(tree) if not isinstance(tree, str) else tree
        return flat
    for key, value in items:
        flat.update(flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def mlflow_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / `` and spaces; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """MLflow and alembic log INFO lines while they create the SQLite tables."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class MlflowLogger:
    """Params (the flattened resolved config) once, metrics at every log call, into the MLflow store at ``uri``
    (default: the SQLite file ``RUN_DIR/mlflow.db``), as one MLflow run of ``experiment`` named after the run
    directory (tag ``peerlearn.run_dir``).

    A shared ``uri`` (``sqlite:////abs/mlflow.db``, ``http://host:5000``) puts every run, every seed of a sweep,
    in one MLflow view. A resumed run continues the same MLflow run (its id is kept in
    ``mlflow_run_id.txt``); steps logged after the checkpoint and before the interruption are logged again, and
    MLflow keeps both values of such a step.
    """

    def __init__(self, run_dir: Path, params: dict[str, str], run_name: str, resume: bool = False,
                 uri: Optional[str] = None, experiment: str = MLFLOW_EXPERIMENT):
        client_class = require_mlflow()
        run_dir = Path(run_dir).resolve()
        self.uri = uri or f"sqlite:///{run_dir / MLFLOW_DB}"
        own_store = uri is None
        id_file = run_dir / MLFLOW_RUN_ID
        try:
            self._start(client_class, run_dir, id_file, params, run_name, resume, experiment, own_store)
        except (ConfigError, OSError):
            raise
        except Exception as error:  # an unreachable server, a refused URI, a store of another MLflow version
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ResourceError(f"MLflow tracking at {self.uri!r} failed: {first}. Check tracking.mlflow (is the "
                                "server running?), or set tracking.mlflow=false.") from None

    def _start(self, client_class, run_dir: Path, id_file: Path, params: dict[str, str], run_name: str,
               resume: bool, experiment: str, own_store: bool) -> None:
        with _quiet_loggers("mlflow", "alembic"):
            self.client = client_class(tracking_uri=self.uri)
            if resume and id_file.is_file():
                self.run_id = id_file.read_text().strip()
                self.client.update_run(self.run_id, status="RUNNING")
                return
            experiment_id = self._experiment(experiment, run_dir if own_store else None)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                                 tags={"peerlearn.run_dir": str(run_dir)}).info.run_id
        id_file.write_text(self.run_id + "\n")
        from mlflow.entities import Param

        entries = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=entries[start:start + 100])

    def _experiment(self, name: str, run_dir: Optional[Path]) -> str:
        """The id of experiment ``name``, created when missing (by another run of a sweep meanwhile: taken)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (run_dir / "mlflow-artifacts").as_uri() if run_dir is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created by a parallel run between the two calls
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, kind: str, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(f"{kind}/{key}"), value, stamp, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def close(self, finished: bool = True) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "FAILED")


def _parse(line: str) -> Optional[dict[str, Any]]:
    """One log line, or None for a blank or torn line (the process was killed while writing it)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _flat(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat(value, name + "/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, float(value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [record for line in path.read_text().splitlines() if (record := _parse(line)) is not None]
