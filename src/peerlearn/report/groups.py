"""Naming and grouping the runs of a report.

Each run's resolved ``config.yaml`` is flattened to dotted keys. A run is labelled by its config ``name`` and
the settings in which the runs of the report differ (``name [optim.lr=0.1, mutual.weight=0]``), with
``seed N`` when seeds differ. Runs whose settings are equal except for ``seed`` (and ``name``) form a **seed
group**; the report gives each group's mean ± sample standard deviation over its runs:

    mean = (1/n) Σ_i x_i,   std = sqrt( Σ_i (x_i − mean)² / (n − 1) )   (0 for a single run)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from peerlearn.config.loading import read_yaml
from peerlearn.engine.tracking import flatten_params
from peerlearn.run_files import CONFIG_NAME

# settings that say how a run was executed, not what it trained
IGNORED_PREFIXES = ("name", "seed", "train.progress", "train.threads", "data.root", "tracking.", "engine.")
MAX_LABEL_SETTINGS = 4


@dataclass
class SeedGroup:
    label: str
    runs: list[Any] = field(default_factory=list)  # RunData
    settings: dict[str, str] = field(default_factory=dict)  # the relevant settings its runs share (no seed)

    @property
    def seeds(self) -> list[int]:
        return [run.settings_seed for run in self.runs]


def run_settings(run_dir: Path) -> dict[str, str]:
    """The run's resolved config as ``{dotted.key: value text}``."""
    path = Path(run_dir) / CONFIG_NAME
    tree = read_yaml(path.read_text()) if path.is_file() else {}
    return flatten_params(tree or {})


def _relevant(key: str) -> bool:
    return not any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in IGNORED_PREFIXES)


def differing_keys(settings: Sequence[dict[str, str]]) -> list[str]:
    """Keys (other than the ignored ones) whose values differ between the runs that have them, in config order.

    A key only some runs have belongs to their recipe's section (a config holds its own recipe's section only):
    the recipe already tells those runs apart, so the key counts only where its values differ."""
    keys: list[str] = []
    for entry in settings:
        keys += [k for k in entry if k not in keys]
    return [k for k in keys if _relevant(k) and len({entry[k] for entry in settings if k in entry}) > 1]


def _describe(settings: dict[str, str], keys: Sequence[str]) -> str:
    shown = [f"{k}={settings.get(k, 'unset')}" for k in keys[:MAX_LABEL_SETTINGS]]
    if len(keys) > MAX_LABEL_SETTINGS:
        shown.append(f"+{len(keys) - MAX_LABEL_SETTINGS} more")
    return f" [{', '.join(shown)}]" if shown else ""


def label_and_group(runs: Sequence[Any]) -> list[SeedGroup]:
    """Set ``run.label`` of every run (name, differing settings, seed) and return the seed groups, in the
    order of their first run. Labels that still collide get ``#2``, ``#3``, ..."""
    settings = [run_settings(run.run_dir) for run in runs]
    keys = differing_keys(settings)
    seeds_differ = len({s.get("seed") for s in settings}) > 1
    groups: dict[tuple, SeedGroup] = {}
    for run, entry in zip(runs, settings):
        name = entry.get("name") or run.summary.get("name") or run.run_dir.name
        base = f"{name}{_describe(entry, keys)}"
        run.settings_seed = int(entry["seed"]) if str(entry.get("seed", "")).lstrip("-").isdigit() else None
        run.label = f"{base} seed {entry.get('seed')}" if seeds_differ else base
        identity = tuple(sorted((k, v) for k, v in entry.items() if _relevant(k)))
        groups.setdefault(identity, SeedGroup(base, settings=dict(identity))).runs.append(run)
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"
    return list(groups.values())


def differing_settings(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The relevant keys whose values differ between two groups' settings, in ``a``'s order. As in
    ``differing_keys``, a key only one of them has belongs to its recipe's section: the ``recipe`` key already
    tells them apart, so such a key does not count."""
    return [k for k in a if k in b and _relevant(k) and a[k] != b[k]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def group_scores(group: SeedGroup) -> dict[str, dict[str, tuple[float, float, int]]]:
    """``{member or "ensemble": {"val top1" | "test top1" | "test top5": (mean, std, n)}}`` over the group's runs."""
    scores: dict[str, dict[str, list[float]]] = {}
    for run in group.runs:
        entries = dict(run.summary.get("members", {}))
        if run.summary.get("ensemble"):
            entries["ensemble"] = run.summary["ensemble"]
        for name, result in entries.items():
            for split, metric in (("val", "top1"), ("test", "top1"), ("test", "top5")):
                value = result.get(split, {}).get(metric)
                if isinstance(value, (int, float)):
                    scores.setdefault(name, {}).setdefault(f"{split} {metric}", []).append(100 * value)
    return {name: {key: (*mean_std(values), len(values)) for key, values in entry.items()}
            for name, entry in scores.items()}
