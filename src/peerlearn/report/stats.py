"""Is A better than B? Paired differences over seeds between seed groups that differ in one setting.

Two seed groups (runs equal but for the seed, ``report.groups``) that differ in one setting — ``recipe``
mutual vs independent, ``mutual.weight`` 1 vs 2 — are compared on the runs they share a seed with: the same
seed gives the same data split, initialisation and batch order, so the per-seed difference removes that
variation from the comparison. For n shared seeds with differences d_i = A_i − B_i (test top-1, in points):

    mean  d̄ = (1/n) Σ_i d_i,       s = sqrt( Σ_i (d_i − d̄)² / (n − 1) )
    95% interval  d̄ ± t_{0.975, n−1} · s / √n           (Student's t, paired)

The difference is called significant (at the 5% level) when the interval excludes 0. With one shared seed
there is no interval: the sentence says to train more seeds. With few seeds the interval is wide, as it should
be: three seeds of a small effect rarely exclude 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

MEMBER_MEAN = "mean of members"
ENSEMBLE = "ensemble"
MAX_COMPARISONS = 24


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom (scipy, a scikit-learn
    dependency)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


@dataclass
class PairedDifference:
    """A − B over the seeds both have: each seed's difference, their mean and the 95% t interval."""

    seeds: list[int]
    differences: list[float]  # points (percent), A − B, one per seed
    a_values: list[float] = field(default_factory=list)
    b_values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return sum(self.differences) / self.n

    @property
    def std(self) -> Optional[float]:
        if self.n < 2:
            return None
        return math.sqrt(sum((d - self.mean) ** 2 for d in self.differences) / (self.n - 1))

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        """The 95% paired t interval of the mean difference (None with one seed)."""
        if self.n < 2:
            return None
        half = t_quantile(0.975, self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def significant(self) -> Optional[bool]:
        interval = self.interval
        return None if interval is None else (interval[0] > 0 or interval[1] < 0)

    def sentence(self, a: str, b: str, what: str = "test top-1") -> str:
        """``mutual − independent (ensemble test top-1): +0.60 pt, 95% interval [−0.20, +1.40], 3 seeds:
        not significant``."""
        head = f"{a} − {b} ({what}): {_signed(self.mean)} pt"
        if self.interval is None:
            return f"{head}, 1 seed: no interval; train more seeds (--seeds 0,1,2) to tell a difference from noise"
        low, high = self.interval
        if not self.significant:
            verdict = "not significant (the interval contains 0: the difference may be noise)"
        else:
            verdict = f"significant at 5% ({a} is {'better' if self.mean > 0 else 'worse'})"
        return f"{head}, 95% interval [{_signed(low)}, {_signed(high)}], {self.n} seeds: {verdict}"


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Optional[PairedDifference]:
    """A − B on the seeds in both (``{seed: value}``); None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return PairedDifference(seeds, [a[s] - b[s] for s in seeds], [a[s] for s in seeds], [b[s] for s in seeds])


def run_scores(summary: dict[str, Any], split: str = "test", metric: str = "top1") -> dict[str, float]:
    """``{member: %, ..., "mean of members": %, "ensemble": %}`` of one run's summary.json."""
    scores = {}
    for name, entry in summary.get("members", {}).items():
        value = (entry.get(split) or {}).get(metric)
        if isinstance(value, (int, float)):
            scores[name] = 100 * value
    if len(scores) > 1:
        scores[MEMBER_MEAN] = sum(scores.values()) / len(scores)
    value = ((summary.get("ensemble") or {}).get(split) or {}).get(metric)
    if isinstance(value, (int, float)):
        scores[ENSEMBLE] = 100 * value
    return scores


@dataclass
class Comparison:
    """Group A against group B: the settings they differ in and the paired difference of each entry."""

    a: Any  # SeedGroup
    b: Any
    keys: list[str]
    a_name: str
    b_name: str
    differences: dict[str, PairedDifference]  # entry (member, "mean of members", "ensemble") -> difference
    unpaired: list[int] = field(default_factory=list)  # seeds one group has and the other lacks

    @property
    def headline(self) -> Optional[str]:
        """The entry the sentence speaks for: the ensemble, else the mean of members, else the one member."""
        for name in (ENSEMBLE, MEMBER_MEAN):
            if name in self.differences:
                return name
        return next(iter(self.differences), None)


def _seed_scores(group) -> dict[str, dict[int, float]]:
    scores: dict[str, dict[int, float]] = {}
    for run in group.runs:
        if run.settings_seed is None:
            continue
        for name, value in run_scores(run.summary).items():
            scores.setdefault(name, {})[run.settings_seed] = value
    return scores


def _side_name(settings: dict[str, str], keys: Sequence[str]) -> str:
    if list(keys) == ["recipe"]:
        return str(settings.get("recipe"))
    return ", ".join(f"{k}={settings.get(k, 'unset')}" for k in keys)


def compare_groups(groups: Sequence[Any], differing) -> list[Comparison]:
    """Every pair of seed groups whose settings differ in exactly one key (when there are only two groups:
    that pair, whatever they differ in), later group − earlier group, paired by seed.

    ``differing(a_settings, b_settings)`` lists the keys in which two groups' settings differ."""
    comparisons = []
    for j, a in enumerate(groups):
        for b in groups[:j]:
            keys = differing(a.settings, b.settings)
            if not keys or (len(keys) > 1 and len(groups) > 2):
                continue
            a_scores, b_scores = _seed_scores(a), _seed_scores(b)
            differences = {}
            for name in a_scores:
                if name in b_scores:
                    found = paired_difference(a_scores[name], b_scores[name])
                    if found is not None:
                        differences[name] = found
            seeds_a, seeds_b = set(a.seeds) - {None}, set(b.seeds) - {None}
            comparisons.append(Comparison(a, b, keys, _side_name(a.settings, keys), _side_name(b.settings, keys),
                                          differences, sorted(seeds_a ^ seeds_b)))
            if len(comparisons) >= MAX_COMPARISONS:
                return comparisons
    return comparisons
