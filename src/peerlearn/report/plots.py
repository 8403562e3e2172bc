"""The report's figures, drawn with matplotlib's Agg backend; each function returns a matplotlib Figure, which
``render`` turns into PNG (embedded in the page) and, on request, SVG or PDF bytes (files beside the page)."""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

from peerlearn.errors import PeerlearnError
from peerlearn.evaluate.metrics import row_normalised
from peerlearn.report.collect import RunData
from peerlearn.report.curves import eval_curves, training_curves


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or a clear error when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise PeerlearnError("The HTML report draws its plots with matplotlib, which is not installed: "
                             "pip install 'peerlearn[report]'.") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


FIGURE_FORMATS = ("png", "svg", "pdf")


def render(fig, fmt: str = "png") -> bytes:
    """``fig`` as ``fmt`` bytes (PNG at 100 dpi; SVG and PDF as vectors); the figure is not closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def close(fig) -> None:
    pyplot().close(fig)


def png_base64(fig) -> str:
    """Render ``fig`` to PNG, close it, return the bytes as base64 text."""
    data = render(fig, "png")
    close(fig)
    return base64.b64encode(data).decode("ascii")


def learning_curves(run: RunData):
    """Left: training loss per member; right: top-1 per member and ensemble (val solid, test dashed)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (epochs, values) in training_curves(run.records).items():
        left.plot(epochs, values, marker="o", markersize=3, label=name)
    left.set(xlabel="epoch", ylabel="training loss (CE)", title="training loss")
    colours = {}
    for split, style in (("val", "-"), ("test", "--")):
        for name, (epochs, values) in eval_curves(run.records).get(split, {}).items():
            line, = right.plot(epochs, [100 * v for v in values], style, marker="o", markersize=3,
                               color=colours.get(name), label=f"{name} ({split})")
            colours[name] = line.get_color()
    right.set(xlabel="epoch", ylabel="top-1 %", title="accuracy (val solid, test dashed)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.suptitle(run.label, fontsize=10)
    return fig


def confusion_matrices(run: RunData):
    """Row-normalised confusion matrix of each member and the ensemble (diagonal = per-class recall)."""
    plt = pyplot()
    entries = list(run.confusion.items())
    classes = len(run.class_names)
    size = min(3.2 + 0.25 * classes, 9.0)
    fig, axes = plt.subplots(1, len(entries), figsize=(size * len(entries), size), squeeze=False)
    for axis, (name, counts) in zip(axes[0], entries):
        rates = row_normalised(counts)
        axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        accuracy = counts.diag().sum().item() / max(counts.sum().item(), 1)
        axis.set(title=f"{name}: top-1 {100 * accuracy:.2f}%", xlabel="predicted", ylabel="true")
        if classes <= 20:
            ticks = range(classes)
            axis.set_xticks(ticks, [str(c)[:10] for c in run.class_names], rotation=90, fontsize=7)
            axis.set_yticks(ticks, [str(c)[:10] for c in run.class_names], fontsize=7)
        if classes <= 12:
            for i in range(classes):
                for j in range(classes):
                    if counts[i, j]:
                        axis.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                                  color="white" if rates[i, j] > 0.5 else "black")
    subset = (f"the first {run.items} of {run.split_items} items" if run.split_items and run.items < run.split_items
              else f"all {run.items} items")
    fig.suptitle(f"{run.label}: {run.split} split, {subset}", fontsize=10)
    return fig


def entropy_histograms(runs: Sequence[RunData]):
    """Distribution of the per-item posterior entropy H(p) of every member of every run."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(8, 4))
    largest = max((float(v.max()) for run in runs for v in run.entropy.values() if len(v)), default=1.0)
    bins = np.linspace(0, max(largest, 1e-3), 40)
    for run in runs:
        for name, values in run.entropy.items():
            label = f"{_prefix(runs, run)}{name} (mean {float(values.mean()):.3f})"
            axis.hist(values.numpy(), bins=bins, histtype="step", linewidth=1.5, label=label)
    axis.set(xlabel="posterior entropy H(p) [nats]", ylabel="items", yscale="log",
             title="posterior entropy per item")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return fig


def flatness_curves(runs: Sequence[RunData]):
    """Training loss after N(0, σ²) noise on every weight, against σ (mean ± std over draws)."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(8, 4))
    for run in runs:
        for name, curve in run.flatness.items():
            sigmas = sorted(curve)
            axis.errorbar(sigmas, [curve[s]["mean"] for s in sigmas], yerr=[curve[s]["std"] for s in sigmas],
                          marker="o", markersize=3, capsize=3, label=f"{_prefix(runs, run)}{name}")
    axis.set(xlabel="noise std σ added to every parameter", ylabel="training loss (CE)",
             title="flatness of the minimum (a lower, flatter curve is a wider minimum)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    return fig


def tsne_maps(run: RunData):
    """One t-SNE scatter per member, points coloured by true class."""
    plt = pyplot()
    entries = list(run.tsne.items())
    fig, axes = plt.subplots(1, len(entries), figsize=(5 * len(entries), 4.6), squeeze=False)
    labels = run.tsne_labels
    cmap = plt.get_cmap("tab10" if len(run.class_names) <= 10 else "tab20")
    for axis, (name, points) in zip(axes[0], entries):
        for k in np.unique(labels):
            chosen = labels == k
            name_k = run.class_names[k] if 0 <= k < len(run.class_names) else str(k)
            axis.scatter(points[chosen, 0], points[chosen, 1], s=6, color=cmap(int(k) % cmap.N), label=name_k)
        axis.set(title=f"{name}: penultimate features", xticks=[], yticks=[])
    if len(run.class_names) <= 20:
        axes[0][-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{run.label}: t-SNE of {len(labels)} {run.split} items", fontsize=10)
    return fig


def _prefix(runs: Sequence[RunData], run: RunData) -> str:
    return f"{run.label}: " if len(runs) > 1 else ""


def cka_matrices(runs: Sequence[RunData]):
    """Linear CKA between the penultimate features of every pair of members, one heatmap per run."""
    plt = pyplot()
    entries = [run for run in runs if run.cka]
    fig, axes = plt.subplots(1, len(entries), figsize=(4.2 * len(entries), 3.8), squeeze=False)
    for axis, run in zip(axes[0], entries):
        names = list(run.cka)
        values = np.array([[run.cka[a][b] for b in names] for a in names])
        axis.imshow(values, cmap="viridis", vmin=0, vmax=1)
        axis.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="black" if values[i, j] > 0.6 else "white")
        axis.set_title(run.label if len(runs) > 1 else "linear CKA", fontsize=9)
    return fig


def seed_group_bars(groups, scores):
    """Test top-1 of every member and ensemble of each seed group: mean over seeds, error bar ± 1 std."""
    plt = pyplot()
    names = []
    for entry in scores:
        names += [n for n in entry if n not in names]
    fig, axis = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(len(names), 1)), 4))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs, means, stds = [], [], []
        for g, entry in enumerate(scores):
            if name in entry and "test top1" in entry[name]:
                mean, std, _ = entry[name]["test top1"]
                xs.append(g + (k - (len(names) - 1) / 2) * width)
                means.append(mean)
                stds.append(std)
        axis.bar(xs, means, width, yerr=stds, capsize=3, label=name)
    axis.set_xticks(range(len(groups)), [f"{g.label}\n(n={len(g.runs)})" for g in groups], fontsize=8)
    low = min((m for entry in scores for e in entry.values() for key, (m, s, n) in e.items() if key == "test top1"),
              default=0.0)
    axis.set(ylabel="test top-1 %", ylim=(max(0.0, low - 10), 100), title="test top-1: mean ± std over seeds")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return fig
