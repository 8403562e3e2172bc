"""`peerlearn report`: analyse finished runs and write one self-contained HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Optional, Sequence

from peerlearn.errors import PeerlearnError
from peerlearn.report import plots
from peerlearn.report.collect import ReportOptionError, ReportOptions, RunData, collect_run
from peerlearn.progress import Mode, note, progress_bar
from peerlearn.report.groups import SeedGroup, differing_settings, group_scores, label_and_group
from peerlearn.report.html import image, render_page
from peerlearn.report.stats import Comparison, compare_groups
from peerlearn.safe_write import check_writable, ensure_folder, write_file
from peerlearn.run_files import REPORT_NAME



def default_output(run_dirs: Sequence[Path]) -> Path:
    """RUN_DIR/report.html for one run (or one sweep folder); ./report.html when comparing several."""
    return run_dirs[0] / REPORT_NAME if len(run_dirs) == 1 else Path(REPORT_NAME)


def expand_sweeps(paths: Sequence[Path]) -> list[Path]:
    """Run directories, with every sweep folder (``peerlearn.sweeps``) replaced by its finished runs."""
    from peerlearn.sweeps import read_sweep, sweep_run_dirs

    expanded: list[Path] = []
    for path in paths:
        if read_sweep(path) is None:
            expanded.append(path)
            continue
        runs = sweep_run_dirs(path)
        if not runs:
            raise PeerlearnError(f"The sweep {str(path)!r} has no finished run yet (see its sweep.json).")
        expanded += runs
    return expanded


class FigureWriter:
    """Turns matplotlib figures into the page's ``<figure>`` blocks: always a PNG embedded in the page; with
    ``fmt`` svg or pdf also a file ``<page stem>_figures/<name>.<fmt>`` beside the page, linked under the image."""

    def __init__(self, page: Path, fmt: str = "png", root: Optional[Path] = None):
        if fmt not in plots.FIGURE_FORMATS:
            raise ReportOptionError(f"--figures must be one of {', '.join(plots.FIGURE_FORMATS)}, got {fmt!r}.")
        self.fmt = fmt
        self.folder = page.parent / f"{page.stem}_figures"
        self.root = root if root is not None else page.parent  # the figures never go outside it
        self.files: list[Path] = []

    def __call__(self, fig, name: str, alt: str, caption: str = "") -> str:
        png = base64.b64encode(plots.render(fig, "png")).decode("ascii")
        link = None
        if self.fmt != "png":
            path = self.folder / f"{_slug(name)}.{self.fmt}"
            write_file(path, plots.render(fig, self.fmt), root=self.root, what="the figure")
            self.files.append(path)
            link = f"{self.folder.name}/{path.name}"
        plots.close(fig)
        return image(png, alt, caption, link=link, link_text=self.fmt.upper())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "figure"


def make_figures(runs: Sequence[RunData], groups: Sequence[SeedGroup], figure: FigureWriter,
                 comparisons: Sequence[Comparison] = (), progress: Mode = "off") -> dict[str, list[str]]:
    figures: dict[str, list[str]] = {"learning-curves": [], "confusion": [], "tsne": []}
    if any(len(group.runs) > 1 for group in groups):
        figures["seed-curves"] = [figure(plots.seed_learning_curves(groups), "seed-learning-curves",
                                         "learning curves averaged over seeds",
                                         "Each configuration's training loss and validation top-1 at every "
                                         "epoch: the mean over its seeds, the band ± one sample standard "
                                         "deviation over the seeds (runs without a validation split show the "
                                         "loss only).")]
    for index, run in enumerate(progress_bar(runs, desc="report figures", unit="runs", mode=progress), 1):
        tag = f"run{index}"
        figures["learning-curves"].append(figure(plots.learning_curves(run), f"{tag}-learning-curves",
                                                 f"learning curves of {run.label}",
                                                 f"{run.label}: from metrics.jsonl"))
        subset = (f"the first {run.items} of {run.split_items} {run.split} items"
                  if run.split_items and run.items < run.split_items else f"all {run.items} {run.split} items")
        figures["confusion"].append(figure(plots.confusion_matrices(run), f"{tag}-confusion",
                                           f"confusion matrices of {run.label}",
                                           f"{run.label}: {subset}; rows are true classes, normalised to 1; "
                                           "numbers are counts"))
        if run.tsne:
            figures["tsne"].append(figure(plots.tsne_maps(run), f"{tag}-tsne", f"t-SNE of {run.label}",
                                          f"{run.label}: t-SNE (perplexity ≤ 30, PCA start) of "
                                          f"{', '.join(run.tsne)}"))
    if any(len(group.runs) > 1 for group in groups):
        scores = [group_scores(group) for group in groups]
        figures["seeds"] = [figure(plots.seed_group_bars(groups, scores), "seed-groups", "test top-1 over seeds",
                                   "Test top-1 of each configuration: the bar is the mean over its seeds (the axis "
                                   "starts at 0), the points are the seeds' runs, the error bar ± one sample "
                                   "standard deviation.")]
    if any(c.differences for c in comparisons):
        figures["differences"] = [figure(plots.paired_differences([c for c in comparisons if c.differences]),
                                         "paired-differences", "paired differences over seeds",
                                         "A − B in test top-1 points for each seed both share (grey points), their "
                                         "mean (diamond) and its 95% t interval (line; red when it excludes 0). "
                                         "The axis is symmetric about 0.")]
    if any(run.cka for run in runs):
        figures["cka"] = [figure(plots.cka_matrices(runs), "cka", "linear CKA between members",
                                 "Linear CKA between members' penultimate features on the analysed items: "
                                 "CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) of the centred features "
                                 "(1: the same representation up to rotation and scale).")]
    figures["entropy"] = [figure(plots.entropy_histograms(runs), "entropy", "posterior entropy histograms",
                                 "Histogram of H(p) = −Σ p log p per item (log scale). The DML paper finds "
                                 "mutually trained members less over-confident: more items at higher entropy.")]
    if any(run.flatness for run in runs):
        items = ", ".join(f"{run.label}: {run.flatness_items}" for run in runs)
        figures["flatness"] = [figure(plots.flatness_curves(runs), "flatness", "flatness curves",
                                      f"Mean training CE after adding N(0, σ²) noise to every weight "
                                      f"(training items used: {items}).")]
    return figures


def output_and_root(run_dirs: Sequence[Path], out: Optional[str | Path]) -> tuple[Path, Path]:
    """The page's path and the folder it and its figures must stay inside: the run directory (one run, no
    --out), the current folder (several runs), or the folder the user named with --out (the file's folder
    when --out names a file)."""
    if out is None:
        target = default_output(run_dirs)
        return target, target.parent
    target = Path(out)
    if target.is_dir():
        return target / REPORT_NAME, target
    return target, target.parent


def build_report(run_dirs: Sequence[str | Path], out: Optional[str | Path] = None,
                 options: Optional[ReportOptions] = None, title: str = "peerlearn report",
                 figures: str = "png", trust_code: bool = False) -> Path:
    """Analyse every run in ``run_dirs`` (run directories or sweep folders) and write the HTML report; return its
    path. ``figures`` svg or pdf also writes every figure as a file in ``<report stem>_figures/`` beside the
    page. Seed groups that differ in one setting are compared by their paired differences over seeds
    (``report.stats``). ``trust_code``: see ``peerlearn.load_run``."""
    options = options or ReportOptions()
    options.check()
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise PeerlearnError("report needs at least one RUN_DIR.")
    if not isinstance(title, str) or len(title) > 1000:
        raise ReportOptionError("--title must be text of at most 1000 characters.")
    plots.pyplot()  # fail before the slow part when matplotlib is missing
    target, root = output_and_root(paths, out)  # one sweep folder: SWEEP_DIR/report.html
    paths = expand_sweeps(paths)
    figure = FigureWriter(target, figures, root)
    if out is not None or root.is_dir():  # (a missing run directory is named by the run reader)
        ensure_folder(target.parent, root, create_root=out is not None)  # a link is refused before the slow part
        check_writable(target.parent, "report's folder")
    runs = []
    for index, path in enumerate(paths, 1):
        if len(paths) > 1:
            note(f"report: analysing run {index}/{len(paths)}: {path}", options.progress)
        runs.append(collect_run(path, options, trust_code))
    groups = label_and_group(runs)
    comparisons = compare_groups(groups, differing_settings)
    page = render_page(runs, make_figures(runs, groups, figure, comparisons, options.progress), title=title,
                       groups=groups, comparisons=comparisons)
    return write_file(target, page, root=root, what="the report")
