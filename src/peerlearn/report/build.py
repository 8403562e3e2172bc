"""`peerlearn report`: analyse finished runs and write one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from peerlearn.errors import PeerlearnError
from peerlearn.report import plots
from peerlearn.report.collect import ReportOptions, RunData, collect_run
from peerlearn.report.html import image, render_page

REPORT_NAME = "report.html"


def default_output(run_dirs: Sequence[Path]) -> Path:
    """RUN_DIR/report.html for one run; ./report.html when comparing several."""
    return run_dirs[0] / REPORT_NAME if len(run_dirs) == 1 else Path(REPORT_NAME)


def unique_labels(runs: Sequence[RunData]) -> None:
    """Label runs by folder name, adding the parent folder where two names collide."""
    names = [run.run_dir.name for run in runs]
    for run, name in zip(runs, names):
        if names.count(name) > 1:
            run.label = f"{run.run_dir.parent.name}/{name}"


def make_figures(runs: Sequence[RunData]) -> dict[str, list[str]]:
    figures: dict[str, list[str]] = {"learning-curves": [], "confusion": [], "tsne": []}
    for run in runs:
        figures["learning-curves"].append(image(plots.learning_curves(run), f"learning curves of {run.label}",
                                                f"{run.label}: from metrics.jsonl"))
        figures["confusion"].append(image(plots.confusion_matrices(run), f"confusion matrices of {run.label}",
                                          f"{run.label}: rows are true classes, normalised to 1; "
                                          "numbers are counts"))
        if run.tsne:
            figures["tsne"].append(image(plots.tsne_maps(run), f"t-SNE of {run.label}",
                                         f"{run.label}: t-SNE (perplexity ≤ 30, PCA start) of "
                                         f"{', '.join(run.tsne)}"))
    figures["entropy"] = [image(plots.entropy_histograms(runs), "posterior entropy histograms",
                                "Histogram of H(p) = −Σ p log p per item (log scale). The DML paper finds "
                                "mutually trained members less over-confident: more items at higher entropy.")]
    if any(run.flatness for run in runs):
        items = ", ".join(f"{run.label}: {run.flatness_items}" for run in runs)
        figures["flatness"] = [image(plots.flatness_curves(runs), "flatness curves",
                                     f"Mean training CE after adding N(0, σ²) noise to every weight "
                                     f"(training items used: {items}).")]
    return figures


def build_report(run_dirs: Sequence[str | Path], out: Optional[str | Path] = None,
                 options: Optional[ReportOptions] = None, title: str = "peerlearn report") -> Path:
    """Analyse every run in ``run_dirs`` and write the HTML report; return its path."""
    options = options or ReportOptions()
    options.check()
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise PeerlearnError("report needs at least one RUN_DIR.")
    plots.pyplot()  # fail before the slow part when matplotlib is missing
    target = Path(out) if out is not None else default_output(paths)
    if target.is_dir():
        target = target / REPORT_NAME
    runs = [collect_run(path, options) for path in paths]
    unique_labels(runs)
    page = render_page(runs, make_figures(runs), title=title)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise PeerlearnError(f"Cannot write the report to {str(target)!r}: {error.strerror}.") from None
    return target
