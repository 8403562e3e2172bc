"""Sweeps: one config trained once per seed and per point of a grid of settings, into one sweep folder.

    peerlearn train CONFIG --seeds 0,1,2 mutual.weight=0.5,1,2 --jobs 2
    peerlearn.sweep(CONFIG, seeds=[0, 1, 2], grid={"mutual.weight": [0.5, 1, 2]}, jobs=2)

The runs are the grid's cartesian product (in the order the keys are given, the last key changing fastest)
times the seeds (changing fastest of all): 3 weights × 3 seeds = 9 runs. ``OUT/<name>-sweep-<time>/`` holds

* ``sweep_config.yaml``: the resolved config every run starts from (the CONFIG with its fixed overrides);
* one ordinary run directory per run (``peerlearn report SWEEP_DIR`` reads them all);
* ``sweep.json``: the seeds, the grid and every run (its overrides, status, directory, seconds, error),
  rewritten atomically whenever a run starts or ends, so a sweep that was stopped says how far it came;
* ``logs/run-NNN.log``: with ``jobs > 1``, the output of each run's process.

``jobs = 1`` trains the runs one after another in this process; ``jobs = N`` runs N processes
(``python -m peerlearn train``) at once, each limited to its share of the CPU threads (``OMP_NUM_THREADS``,
unless set) when the config does not choose ``train.threads``. A failed run is recorded and the others go on.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from peerlearn.config import RunConfig, config_yaml, load_config
from peerlearn.engine.run_dir import create_run_dir, ensure_writable, open_nofollow
from peerlearn.errors import ConfigError, PeerlearnError, Preempted
from peerlearn.safe_write import ensure_folder, write_file

SWEEP_FILE = "sweep.json"
SWEEP_CONFIG = "sweep_config.yaml"
LOGS = "logs"


@dataclass
class SweepRun:
    """One run of a sweep: its overrides on top of ``sweep_config.yaml`` and how it went."""

    index: int
    overrides: list[str]
    status: str = "pending"  # pending, running, done, failed
    run_dir: Optional[str] = None  # relative to the sweep folder
    seconds: Optional[float] = None
    error: Optional[str] = None
    exit_code: Optional[int] = None
    summary: Optional[dict[str, Any]] = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return ", ".join(self.overrides)


@dataclass
class SweepResult:
    """A finished sweep: its folder and its runs (``run.summary`` holds each finished run's summary.json)."""

    sweep_dir: Path
    runs: list[SweepRun]

    @property
    def run_dirs(self) -> list[Path]:
        return [self.sweep_dir / run.run_dir for run in self.runs if run.status == "done" and run.run_dir]

    @property
    def failed(self) -> list[SweepRun]:
        return [run for run in self.runs if run.status != "done"]


# --------------------------------------------------------------------------- the grid
def split_values(text: str) -> list[str]:
    """``0.5,1,2`` -> ["0.5", "1", "2"]: commas outside brackets, braces and quotes separate grid values
    (``[16, 32],[64]`` is two lists); one value comes back as a list of one."""
    parts, depth, quote, start = [], 0, None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def _grid_item(part: str) -> bool:
    """A grid value is a YAML scalar without spaces, a quoted string or a flow list/mapping."""
    return bool(part) and (part[0] in "[{'\"" or not any(c.isspace() for c in part))


def grid_override(text: str) -> Optional[tuple[str, list[str]]]:
    """``mutual.weight=0.5,1,2`` -> ("mutual.weight", ["0.5", "1", "2"]); None for a plain override (one value,
    or a value with spaces around its commas such as a SQL query; quote a value to keep its commas)."""
    if "=" not in text:
        return None
    key, raw = text.split("=", 1)
    values = split_values(raw)
    if len(values) < 2 or not all(_grid_item(v) for v in values):
        return None
    return key.strip(), values


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-4`` (inclusive) or a mix (``0-2,7``) -> the seeds, each once, in order."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                chosen = list(range(int(low), int(high) + 1))
            else:
                chosen = [int(part)]
        except ValueError:
            raise ConfigError(f"--seeds takes integers, e.g. 0,1,2 or 0-4; got {text!r}.") from None
        seeds += [s for s in chosen if s not in seeds]
    if not seeds:
        raise ConfigError(f"--seeds names no seed: {text!r}.")
    return seeds


def plan_runs(grid: dict[str, Sequence[Any]], seeds: Optional[Sequence[int]]) -> list[list[str]]:
    """The overrides of every run: the grid's cartesian product, then the seeds (fastest)."""
    keys = list(grid)
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"The grid of {key!r} has no value.")
        if key == "seed":
            raise ConfigError("Give the seeds with --seeds (seeds=[...] in Python), not as a grid of 'seed'.")
    points = [list(p) for p in itertools.product(*[[_text(v) for v in grid[k]] for k in keys])] or [[]]
    runs = []
    for point in points:
        for seed in (seeds if seeds else [None]):
            runs.append([f"{k}={v}" for k, v in zip(keys, point)] + ([f"seed={seed}"] if seed is not None else []))
    return runs


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, booleans, lists and mappings as YAML flow text


# --------------------------------------------------------------------------- the sweep
def sweep(config: Union[str, Path, dict, RunConfig, None] = None, *, seeds: Optional[Sequence[int]] = None,
          grid: Optional[dict[str, Sequence[Any]]] = None, overrides: Optional[list[str]] = None,
          out: Union[str, Path] = "runs", jobs: int = 1, members: Optional[dict[str, Any]] = None,
          data: Any = None, report: Optional[Callable[[str, SweepRun, "Sweep"], None]] = None,
          trust_code: bool = False) -> SweepResult:
    """Train ``config`` once per seed and per grid point (see the module); return the sweep's runs.

    ``grid`` maps dotted keys to the values to try (``{"mutual.weight": [0.5, 1, 2]}``); ``overrides`` are
    fixed ``key=value`` settings of every run. ``report(event, run, sweep)`` is called with "start" and "end"
    of every run. ``members`` and ``data`` (your own modules and Datasets) need ``jobs=1``. ``trust_code``:
    as ``peerlearn.train``'s (the runs a run reads, such as transfer sources, may name code not signed by you).
    """
    plan = Sweep.create(config, seeds=seeds, grid=grid or {}, overrides=overrides or [], out=out, jobs=jobs,
                        python_inputs=members is not None or data is not None, trust_code=trust_code)
    return plan.run(report=report, members=members, data=data)


class Sweep:
    """A planned sweep: its folder, base config and runs; ``run()`` trains them."""

    def __init__(self, sweep_dir: Path, base: RunConfig, seeds: list[int], grid: dict[str, list[str]], jobs: int,
                 runs: list[SweepRun], source: Any = None, fixed: Sequence[str] = (), trust_code: bool = False):
        self.source = source if source is not None else base  # what each run in this process is trained from
        self.fixed = list(fixed)  # ... with these overrides, then its own
        self.sweep_dir = sweep_dir
        self.base = base
        self.seeds = seeds
        self.grid = grid
        self.jobs = jobs
        self.runs = runs
        self.trust_code = trust_code

    @classmethod
    def create(cls, config, *, seeds, grid, overrides, out, jobs: int = 1, python_inputs: bool = False,
               trust_code: bool = False) -> "Sweep":
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
        if python_inputs and jobs > 1:
            raise ConfigError("members or data given as Python objects cannot travel to other processes; "
                              "sweep them with jobs=1.")
        seeds = list(seeds or [])
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must differ, got {seeds}.")
        runs = plan_runs(grid, seeds)
        if len(runs) < 2:
            raise ConfigError("A sweep needs at least two runs: several seeds (--seeds 0,1,2) or a grid "
                              "(key=v1,v2); train one run without them.")
        base = load_config(config, overrides)
        for overrides_of_run in runs:  # every run's config is valid before anything is trained
            load_config(base, overrides_of_run)
        ensure_writable(Path(out))
        sweep_dir = create_run_dir(Path(out), f"{base.name}-sweep")
        write_file(sweep_dir / SWEEP_CONFIG, config_yaml(base), root=sweep_dir, what="the sweep's config")
        plan = cls(sweep_dir, base, seeds, {k: [_text(v) for v in vs] for k, vs in grid.items()}, jobs,
                   [SweepRun(index, run) for index, run in enumerate(runs)], source=config, fixed=overrides,
                   trust_code=trust_code)
        plan.save()
        return plan

    # ------------------------------------------------------------------ record
    def record(self) -> dict[str, Any]:
        return {"format": 1, "name": self.base.name, "config": SWEEP_CONFIG, "seeds": self.seeds, "grid": self.grid,
                "jobs": self.jobs,
                "runs": [{k: v for k, v in asdict(run).items() if k != "summary"} for run in self.runs]}

    def save(self) -> None:
        write_file(self.sweep_dir / SWEEP_FILE, json.dumps(self.record(), indent=2) + "\n", root=self.sweep_dir,
                   what="the sweep record")

    # ------------------------------------------------------------------ training
    def run(self, report=None, members=None, data=None) -> SweepResult:
        notify = report or (lambda event, run, plan: None)
        if self.jobs == 1:
            for run in self.runs:
                self._start(run, notify)
                self._train_here(run, members, data)
                self._end(run, notify)
        else:
            self._train_in_processes(notify)
        return SweepResult(self.sweep_dir, self.runs)

    def _start(self, run: SweepRun, notify) -> None:
        run.status = "running"
        self.save()
        notify("start", run, self)

    def _end(self, run: SweepRun, notify) -> None:
        if run.run_dir and run.status == "done" and run.summary is None:  # a run of another process
            run.summary = _finished_summary(self.sweep_dir / run.run_dir)
        self.save()
        notify("end", run, self)

    def _train_here(self, run: SweepRun, members, data) -> None:
        from peerlearn.api import train

        started = time.perf_counter()
        try:
            result = train(self.source, out=self.sweep_dir, overrides=[*self.fixed, *run.overrides], members=members,
                           data=data, trust_code=self.trust_code)
        except Preempted as error:  # SIGINT/SIGTERM: the run saved its checkpoint; the sweep stops too
            run.status, run.error, run.exit_code = "failed", str(error), error.exit_code
            run.seconds = round(time.perf_counter() - started, 3)
            self.save()
            raise
        except PeerlearnError as error:  # this run's own failure (diverged, a resource): the others go on
            run.status, run.error, run.exit_code = "failed", str(error), error.exit_code
        except BaseException as error:  # Ctrl-C, SIGTERM, or a crash: recorded, then the sweep stops
            stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
            run.status = "failed"
            run.error = "interrupted" if stopped else f"{type(error).__name__}: {error}"[:500]
            run.seconds = round(time.perf_counter() - started, 3)
            self.save()
            raise
        else:
            run.status, run.run_dir, run.summary = "done", result.run_dir.name, result.summary
        run.seconds = round(time.perf_counter() - started, 3)

    def _command(self, run: SweepRun) -> list[str]:
        return [sys.executable, "-m", "peerlearn", "train", str(self.sweep_dir / SWEEP_CONFIG), *run.overrides,
                "--out", str(self.sweep_dir), *(["--trust-code"] if self.trust_code else [])]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.base.train.threads is None:  # N processes share the cores instead of each taking all of them
            share = str(max(1, (os.cpu_count() or 1) // self.jobs))
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(name, share)
        here = str(Path(__file__).resolve().parents[1])  # the processes import this peerlearn
        env["PYTHONPATH"] = os.pathsep.join([here, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        return env

    def _train_in_processes(self, notify) -> None:
        logs = ensure_folder(self.sweep_dir / LOGS, self.sweep_dir)  # never through a link
        waiting = list(self.runs)
        running: list[tuple[SweepRun, subprocess.Popen, Any, float]] = []
        try:
            while waiting or running:
                while waiting and len(running) < self.jobs:
                    run = waiting.pop(0)
                    self._start(run, notify)
                    log = os.fdopen(open_nofollow(logs / f"run-{run.index:03d}.log",
                                                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8")
                    process = subprocess.Popen(self._command(run), stdout=log, stderr=subprocess.STDOUT,
                                               env=self._environment())
                    running.append((run, process, log, time.perf_counter()))
                for entry in list(running):
                    run, process, log, started = entry
                    if process.poll() is None:
                        continue
                    log.close()
                    running.remove(entry)
                    run.seconds = round(time.perf_counter() - started, 3)
                    self._finish_process(run, process.returncode, logs / f"run-{run.index:03d}.log")
                    self._end(run, notify)
                time.sleep(0.1)
        except BaseException:
            for run, process, log, _ in running:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                log.close()
                run.status, run.error = "failed", "interrupted"
            self.save()
            raise

    def _finish_process(self, run: SweepRun, code: int, log: Path) -> None:
        text = log.read_text(encoding="utf-8", errors="replace")
        found = [line.split("run directory:", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("run directory:")]
        if found:
            run.run_dir = Path(found[-1]).name
        if code == 0 and found:
            run.status = "done"
            return
        lines = [line for line in text.splitlines() if line.strip()]
        run.status, run.exit_code = "failed", code
        run.error = (lines[-1] if lines else f"exit code {code}")[:500] + f" (log: {LOGS}/{log.name})"


def _finished_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """A finished run's summary, read as the report reads it: checked against the run's recorded hashes
    (``peerlearn.trust``); None when it cannot be read (the sweep goes on, its table shows no score)."""
    from peerlearn.report.collect import read_summary

    try:
        return read_summary(run_dir)
    except PeerlearnError:
        return None


def read_sweep(folder: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The ``sweep.json`` of a sweep folder, or None when ``folder`` is not one."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PeerlearnError(f"{str(path)!r} cannot be read: {error}.") from None
    return record if isinstance(record, dict) else None


def sweep_run_dirs(folder: Union[str, Path]) -> list[Path]:
    """The finished runs of the sweep in ``folder``, in the sweep's order."""
    record = read_sweep(folder) or {}
    return [Path(folder) / run["run_dir"] for run in record.get("runs", [])
            if run.get("status") == "done" and run.get("run_dir")]
