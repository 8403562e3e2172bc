"""The report page: one HTML file with inline CSS and every figure embedded as a base64 PNG.

A small inline script marks the page once it has loaded: ``#render-check`` gets
``data-status="ok"`` and the text ``images loaded: N/N`` when every image decoded (naturalWidth > 0),
so a headless browser can confirm that the page renders with its plots.
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Sequence

from peerlearn import __version__
from peerlearn.engine.evaluation import ENSEMBLE
from peerlearn.report.collect import RunData

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta, figcaption, #render-check { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
nav a { margin-right: 1em; }
"""

CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  var marker = document.getElementById("render-check");
  marker.setAttribute("data-status", ok === images.length ? "ok" : "broken");
  marker.textContent = "images loaded: " + ok + "/" + images.length;
});
"""

SECTIONS = (
    ("comparison", "Comparison of runs"),
    ("seeds", "Seeds: mean ± std"),
    ("differences", "Is the difference real? Paired over seeds"),
    ("learning-curves", "Learning curves"),
    ("cka", "Similarity of members (CKA)"),
    ("confusion", "Confusion matrices"),
    ("entropy", "Posterior entropy"),
    ("flatness", "Flatness of the minimum"),
    ("tsne", "t-SNE of penultimate features"),
)


def _shown(sid: str, figures: dict[str, list[str]], comparisons: Sequence[Any]) -> bool:
    if sid == "differences":
        return bool(comparisons)
    return sid not in ("seeds", "cka") or bool(figures.get(sid))


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def image(png_base64: str, alt: str, caption: str = "", link: str | None = None, link_text: str = "") -> str:
    """A ``<figure>`` with the PNG embedded; ``link`` (a file beside the page, e.g. the SVG) goes in the caption."""
    tag = f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">'
    extra = f' <a href="{esc(link)}">{esc(link_text or link)}</a>' if link else ""
    text = f"<figcaption>{esc(caption)}{extra}</figcaption>" if caption or extra else ""
    return f"<figure>{tag}{text}</figure>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(f'<td class="num">{value:.2f}</td>' if abs(value) >= 1 or value == 0 else
                             f'<td class="num">{value:.4f}</td>')
            elif isinstance(value, int) and not isinstance(value, bool):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{esc('' if value is None else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pct(value: Any) -> Any:
    return round(100 * value, 2) if isinstance(value, (int, float)) else None


def comparison_rows(runs: Sequence[RunData]) -> list[list[Any]]:
    """One row per member and ensemble of each run, from summary.json."""
    rows = []
    for run in runs:
        s = run.summary
        entries = list(s.get("members", {}).items())
        if s.get("ensemble"):
            entries.append((ENSEMBLE, s["ensemble"]))
        for name, scores in entries:
            val, test = scores.get("val", {}), scores.get("test", {})
            rows.append([run.label, s.get("recipe"), s.get("dataset"), name, run.models.get(name, ""),
                         _pct(val.get("top1")), _pct(test.get("top1")), _pct(test.get("top5")),
                         test.get("nll"), s.get("epochs"), s.get("train_seconds")])
    return rows


def analysis_rows(runs: Sequence[RunData]) -> list[list[Any]]:
    rows = []
    for run in runs:
        for name, values in run.entropy.items():
            curve = run.flatness.get(name, {})
            sigmas = sorted(curve)
            rows.append([run.label, name, float(values.mean()),
                         curve[sigmas[0]]["mean"] if sigmas else None,
                         curve[sigmas[-1]]["mean"] if sigmas else None])
    return rows


def seed_rows(groups) -> list[list[Any]]:
    """One row per member and ensemble of each seed group: n runs, seeds, mean ± std of the scores."""
    from peerlearn.report.groups import group_scores

    rows = []
    for group in groups:
        for name, entry in group_scores(group).items():
            cells = [f"{entry[k][0]:.2f} ± {entry[k][1]:.2f}" if k in entry else ""
                     for k in ("val top1", "test top1", "test top5")]
            rows.append([group.label, name, len(group.runs), ", ".join(str(s) for s in group.seeds), *cells])
    return rows


def difference_rows(comparisons) -> list[list[Any]]:
    """One row per comparison and entry: A − B, seeds, each seed's difference, mean, 95% interval, verdict."""
    rows = []
    for c in comparisons:
        for name, d in c.differences.items():
            interval = d.interval
            verdict = ("one seed: no interval" if d.significant is None else
                       "significant" if d.significant else "not significant")
            rows.append([f"{c.a_name} − {c.b_name}", name, d.n, ", ".join(str(s) for s in d.seeds),
                         ", ".join(f"{x:+.2f}" for x in d.differences), f"{d.mean:+.2f}",
                         "" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]", verdict])
    return rows


def difference_text(comparisons) -> list[str]:
    """The section's paragraphs: how the comparison is made, then one sentence per comparison."""
    parts = ["<p>Configurations that differ in one setting are compared on the seeds both ran: the difference "
             "A − B in test top-1 (percentage points) of each seed, its mean and the 95% interval of the mean "
             "(paired Student's t: mean ± t<sub>0.975, n−1</sub> · s / √n). A difference is significant at 5% "
             "when its interval excludes 0; with few seeds only a large difference is.</p>"]
    sentences = [c.differences[c.headline].sentence(c.a_name, c.b_name, f"{c.headline} test top-1")
                 for c in comparisons if c.headline is not None]
    if sentences:
        parts.append("<ul>" + "".join(f'<li class="verdict">{esc(text)}</li>' for text in sentences) + "</ul>")
    lonely = [c for c in comparisons if not c.differences]
    for c in lonely:
        parts.append(f"<p>{esc(c.a_name)} and {esc(c.b_name)} share no seed: nothing to pair (train both with "
                     "the same --seeds).</p>")
    for c in comparisons:
        if c.unpaired and c.differences:
            parts.append(f"<p>{esc(c.a_name)} − {esc(c.b_name)}: seeds {esc(', '.join(map(str, c.unpaired)))} ran "
                         "on one side only and are left out.</p>")
    return parts


def render_page(runs: Sequence[RunData], figures: dict[str, list[str]], title: str = "peerlearn report",
                groups: Sequence[Any] = (), comparisons: Sequence[Any] = ()) -> str:
    """The whole page. ``figures`` maps a section id to its ready HTML blocks (see ``image``)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    sigma_max = max((max(c) for run in runs for c in run.flatness.values() if c), default=None)
    sigma_min = min((min(c) for run in runs for c in run.flatness.values() if c), default=None)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{len(runs)} run(s): {esc("; ".join(f"{r.label} = {r.run_dir}" for r in runs))}. '
        f"Generated {esc(stamp)} by peerlearn {esc(__version__)}.</p>",
        "<nav>" + "".join(f'<a href="#{sid}">{esc(head)}</a>' for sid, head in SECTIONS
                          if _shown(sid, figures, comparisons)) + "</nav>",
    ]
    for sid, heading in SECTIONS:
        if not _shown(sid, figures, comparisons):
            continue  # no run with several seeds / nothing to compare / no run with several members
        parts.append(f'<section id="{sid}"><h2>{esc(heading)}</h2>')
        if sid == "seeds":
            parts.append("<p>Runs whose configs are equal except for the seed, grouped: mean ± sample standard "
                         "deviation (n − 1) over the seeds of the final scores in %.</p>")
            parts.append(table(["configuration", "member", "runs", "seeds", "val top-1 %", "test top-1 %",
                                "test top-5 %"], seed_rows(groups)))
            parts.extend(figures.get("seed-curves", []))
        if sid == "differences":
            parts.extend(difference_text(comparisons))
            parts.append(table(["A − B", "member", "n", "seeds", "per seed (pt)", "mean (pt)", "95% interval",
                                "verdict"], difference_rows(comparisons)))
        if sid == "comparison":
            parts.append("<p>Final scores from each run's summary.json (top-1 / top-5 in %, NLL in nats). "
                         "Choose between runs on validation; the test column is for reporting.</p>")
            parts.append(table(["run", "recipe", "dataset", "member", "model", "val top-1 %", "test top-1 %",
                                "test top-5 %", "test NLL", "epochs", "train s"], comparison_rows(runs)))
            parts.append("<p>Analyses of the final weights: mean posterior entropy on the analysed split, "
                         "training loss without noise and at the largest noise level.</p>")
            parts.append(table(["run", "member", "mean entropy (nats)",
                                f"train loss σ={sigma_min:g}" if sigma_min is not None else "train loss",
                                f"train loss σ={sigma_max:g}" if sigma_max is not None else "noisy train loss"],
                               analysis_rows(runs)))
        blocks = figures.get(sid, [])
        if sid == "learning-curves" and len(blocks) > 4:  # a sweep's runs: the averages above come first
            parts.append(f"<details><summary>the {len(blocks)} runs one by one</summary>{''.join(blocks)}</details>")
        else:
            parts.extend(blocks)
        parts.append("</section>")
    parts.append('<p id="render-check" data-status="pending">images not checked (scripts off)</p>')
    parts.append(f"<script>{CHECK_SCRIPT}</script></body></html>")
    return "\n".join(parts)
