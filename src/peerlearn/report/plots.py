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
        _integer_epochs(axis)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    fig.suptitle(run.label, fontsize=10)
    return fig


def _integer_epochs(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


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


def _wrapped(text: str, width: int = 34) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) or text


PAGE_INCHES = 11.5  # the report page is 1200 px wide and figures are drawn at 100 dpi: wider ones are shrunk


def cka_matrices(runs: Sequence[RunData]):
    """Linear CKA between the penultimate features of every pair of members, one heatmap per run, laid out in a
    grid with one colour scale (0..1) and one colour bar. The figure keeps to the page's width (so nothing is
    shrunk): a heatmap's side grows with the number of members and the grid takes as many per row as fit; each
    heatmap's labels are sized to its cells, and cell values are written up to 8 members."""
    plt = pyplot()
    entries = [run for run in runs if run.cka]
    members = max(len(run.cka) for run in entries)
    side = min(PAGE_INCHES - 1.3, max(3.3, 1.6 + (0.55 if members <= 8 else 0.38) * members))
    columns = max(1, min(len(entries), int((PAGE_INCHES - 1.3) // side)))
    rows = -(-len(entries) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns + 1.3, (side + 0.8) * rows), squeeze=False,
                             constrained_layout=True)
    image = None
    for axis, run in zip(axes.flat, entries):
        names = list(run.cka)
        values = np.array([[run.cka[a][b] for b in names] for a in names])
        cell_points = 72 * (side - 1.4) / len(names)  # the width of one cell in points
        size = float(np.clip(cell_points / 3.2, 6, 10))
        image = axis.imshow(values, cmap="viridis", vmin=0, vmax=1)
        shown = [n if len(n) <= 14 else n[:13] + "…" for n in names]
        axis.set_xticks(range(len(names)), shown, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
        axis.set_yticks(range(len(names)), shown, fontsize=size)
        if len(names) <= 8:
            for i in range(len(names)):
                for j in range(len(names)):
                    axis.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size,
                              color="black" if values[i, j] > 0.6 else "white")
        axis.set_title(_wrapped(run.label if len(entries) > 1 else "linear CKA", int(13 * side)), fontsize=9)
    for axis in list(axes.flat)[len(entries):]:
        axis.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.9 if rows == 1 else 0.5, label="linear CKA")
    return fig


def _jitter(count: int, width: float) -> np.ndarray:
    return np.linspace(-width, width, count) if count > 1 else np.zeros(1)


def seed_group_bars(groups, scores):
    """Test top-1 of every member and ensemble of each seed group: a bar at the mean over seeds (the axis starts
    at 0, so that bars are not stretched), an error bar of ± one sample std, and each seed's run as a point."""
    plt = pyplot()
    names = []
    for entry in scores:
        names += [n for n in entry if n not in names]
    fig, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(len(names), 1)), 4.2))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        colour = f"C{k % 10}"
        for g, (group, entry) in enumerate(zip(groups, scores)):
            if name not in entry or "test top1" not in entry[name]:
                continue
            mean, std, _ = entry[name]["test top1"]
            x = g + (k - (len(names) - 1) / 2) * width
            axis.bar(x, mean, width * 0.9, color=colour, alpha=0.45, label=name if g == 0 else None)
            axis.errorbar(x, mean, yerr=std, color="black", capsize=3, linewidth=1)
            values = [100 * v for v in _group_values(group, name)]
            axis.scatter(x + _jitter(len(values), width * 0.25), values, s=14, color=colour, edgecolor="black",
                         linewidth=0.5, zorder=3)
    axis.set_xticks(range(len(groups)), [f"{_wrapped(g.label, 28)}\n(n={len(g.runs)})" for g in groups], fontsize=8)
    axis.set(ylabel="test top-1 %", ylim=(0, 100),
             title="test top-1: bars = mean over seeds, points = each seed, error bars = ± 1 std")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _group_values(group, name: str) -> list[float]:
    values = []
    for run in group.runs:
        entry = run.summary.get("ensemble") if name == "ensemble" else run.summary.get("members", {}).get(name)
        value = ((entry or {}).get("test") or {}).get("top1")
        if isinstance(value, (int, float)):
            values.append(value)
    return values


def paired_differences(comparisons):
    """A − B per seed (points), the mean (diamond) and its 95% interval (line) of every comparison and entry,
    around a zero line; the axis is symmetric about 0 and at least ±1 point wide, so that neither a sign nor a
    size is exaggerated."""
    plt = pyplot()
    rows = [(c, name, d) for c in comparisons for name, d in c.differences.items()]
    fig, axis = plt.subplots(figsize=(8.5, 0.9 + 0.42 * len(rows)))
    reach = 1.0
    for y, (comparison, name, difference) in enumerate(rows):
        colour = "C3" if difference.significant else "C0"
        axis.scatter(difference.differences, [y + o for o in _jitter(difference.n, 0.12)], s=16, color="grey",
                     zorder=2)
        if difference.interval is not None:
            low, high = difference.interval
            axis.plot([low, high], [y, y], color=colour, linewidth=2.5, zorder=1)
            reach = max(reach, abs(low), abs(high))
        axis.scatter([difference.mean], [y], marker="D", s=40, color=colour, zorder=3)
        reach = max(reach, *[abs(d) for d in difference.differences])
    axis.axvline(0, color="black", linewidth=1)
    axis.set_yticks(range(len(rows)), [_wrapped(f"{c.a_name} − {c.b_name}: {name} (n={d.n})", 60)
                                       for c, name, d in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(-1.15 * reach, 1.15 * reach)
    axis.set(xlabel="difference in test top-1 (percentage points), paired by seed",
             title="A − B: points = seeds, diamond = mean, line = 95% interval (red: excludes 0)")
    axis.grid(axis="x", alpha=0.3)
    return fig


def seed_learning_curves(groups):
    """Per seed group: the training loss (mean over members) and the validation top-1 (mean over members,
    solid; the ensemble, dashed) averaged over the group's seeds at every epoch, with a band of ± one std
    over the seeds."""
    plt = pyplot()
    from peerlearn.report.curves import mean_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, group in enumerate(groups):
        colour = f"C{index % 10}"
        label = f"{_wrapped(group.label, 40)} (n={len(group.runs)})"
        for axis, key, style, scale, name in ((left, "loss", "-", 1.0, label),
                                              (right, "val members", "-", 100.0, label),
                                              (right, "val ensemble", "--", 100.0, None)):
            epochs, mean, std = mean_curve([run.records for run in group.runs], key)
            if not epochs:
                continue
            mean, std = np.array(mean) * scale, np.array(std) * scale
            axis.plot(epochs, mean, style, color=colour, marker="o", markersize=3, label=name)
            axis.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
    left.set(xlabel="epoch", ylabel="training loss (CE, mean of members)", title="training loss")
    right.set(xlabel="epoch", ylabel="validation top-1 %", title="validation top-1 (members solid, ensemble dashed)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        _integer_epochs(axis)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    fig.suptitle("mean over seeds, band = ± 1 std over seeds", fontsize=10)
    return fig
