"""`peerlearn report`: the numbers behind the page, the self-contained HTML, and its rendering in Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.report import ReportOptions, build_report
from peerlearn.report.collect import collect_run
from peerlearn.report.curves import eval_curves, training_curves

FAST = ReportOptions(flatness_items=200, sigmas=(0.0, 0.05), draws=1, tsne_items=120, progress="off")
HEADINGS = ["Comparison of runs", "Seeds: mean ± std", "Is the difference real? Paired over seeds", "Learning curves",
            "Similarity of members (CKA)", "Confusion matrices", "Posterior entropy", "Flatness of the minimum",
            "t-SNE of penultimate features"]
IMAGES = 18  # seeds + seed-averaged curves + paired differences + 4 learning curves + CKA + 4 confusion figures
#              + entropy + flatness + 4 t-SNE


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """independent (seed 0), mutual (seed 0), mutual (seed 1), independent (seed 1): two seed groups, compared
    on seeds 0 and 1."""
    out = tmp_path_factory.mktemp("runs")
    return [peerlearn.train(tiny_config(name=recipe, recipe=recipe, seed=seed), out=out).run_dir
            for recipe, seed in (("independent", 0), ("mutual", 0), ("mutual", 1), ("independent", 1))]


def test_curves_follow_metrics_jsonl():
    records = [{"kind": "train", "epoch": 1, "a/ce": 2.0, "b/ce": 3.0, "loss": 9.0},
               {"kind": "eval", "epoch": 1, "val": {"a": {"top1": 0.5}, "ensemble": {"top1": 0.6}}},
               {"kind": "train", "epoch": 2, "a/ce": 1.0, "b/ce": 1.5, "loss": 9.0},
               {"kind": "eval", "epoch": 2, "val": {"a": {"top1": 0.7}, "ensemble": {"top1": 0.8}}}]
    assert training_curves(records) == {"a": ([1.0, 2.0], [2.0, 1.0]), "b": ([1.0, 2.0], [3.0, 1.5])}
    assert eval_curves(records)["val"]["ensemble"] == ([1.0, 2.0], [0.6, 0.8])
    assert training_curves([{"kind": "train", "epoch": 1, "loss": 0.5}]) == {"loss": ([1.0], [0.5])}


def test_collected_numbers_agree_with_the_run_summary(runs):
    run = collect_run(runs[1], ReportOptions(**{**FAST.__dict__, "limit": None}))
    summary = json.loads((runs[1] / "summary.json").read_text())
    assert run.items == summary["sizes"]["test"]
    for name in ("a", "b", "ensemble"):
        counts = run.confusion[name]
        scores = summary["members"][name] if name != "ensemble" else summary["ensemble"]
        assert counts.sum() == run.items
        assert counts.diag().sum().item() / run.items == pytest.approx(scores["test"]["top1"], abs=1e-6)
    assert set(run.tsne) == {"a", "b"} and run.tsne["a"].shape == (120, 2)
    assert set(run.flatness["a"]) == {0.0, 0.05}
    assert run.flatness["a"][0.05]["mean"] > run.flatness["a"][0.0]["mean"]  # heavy noise hurts


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_one_self_contained_html_file(runs, tmp_path):
    out = build_report(runs, tmp_path / "cmp.html", FAST)
    page = out.read_text()
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    images = _images(page)
    assert len(images) == page.count("<img ") == IMAGES
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 2000 for image in images)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert f"{100 * summary['members']['a']['test']['top1']:.2f}" in page
    # runs are labelled by name and the settings that differ, not by their timestamped folders
    assert "independent [recipe=independent] seed 0" in page and "mutual [recipe=mutual] seed 1" in page
    assert f"<td>{runs[1].name}</td>" not in page
    # the seed group: mean ± sample std of the two mutual runs
    scores = [json.loads((run / "summary.json").read_text())["ensemble"]["test"]["top1"] * 100 for run in runs[1:3]]
    mean, std = sum(scores) / 2, abs(scores[0] - scores[1]) / 2 ** 0.5
    assert f"<td>mutual [recipe=mutual]</td><td>ensemble</td><td class=\"num\">2</td><td>0, 1</td>" in page
    assert f"{mean:.2f} ± {std:.2f}" in page
    assert "all 450 test items" in page  # confusion matrices use the whole split by default
    # mutual − independent, paired on the seeds both ran, with its interval and a verdict in words
    top1 = [json.loads((run / "summary.json").read_text())["ensemble"]["test"]["top1"] * 100 for run in runs]
    differences = [top1[1] - top1[0], top1[2] - top1[3]]  # seed 0, seed 1
    shown = f"{(differences[0] + differences[1]) / 2:+.2f}".replace("-", "−")
    assert f"mutual − independent (ensemble test top-1): {shown} pt, 95% interval [" in page
    assert "2 seeds: " in page and ("not significant" in page or "significant at 5%" in page)


def test_paired_difference_and_its_t_interval_by_hand():
    from peerlearn.report.stats import paired_difference

    a, b = {0: 82.0, 1: 83.5, 2: 84.0, 7: 90.0}, {0: 81.0, 1: 82.5, 2: 84.5}
    found = paired_difference(a, b)
    assert found.seeds == [0, 1, 2] and found.differences == [1.0, 1.0, -0.5]  # seed 7 has no partner
    mean = 0.5
    sd = ((0.5 ** 2 + 0.5 ** 2 + 1.0 ** 2) / 2) ** 0.5  # sample std of the differences, 0.866
    half = 4.302652729911275 * sd / 3 ** 0.5  # t_{0.975, 2} (tables: 4.303)
    assert found.mean == pytest.approx(mean) and found.std == pytest.approx(sd)
    assert found.interval == pytest.approx((mean - half, mean + half))
    assert found.significant is False
    text = found.sentence("mutual", "independent", "ensemble test top-1")
    assert text.startswith("mutual − independent (ensemble test top-1): +0.50 pt, 95% interval [−1.65, +2.65], "
                           "3 seeds: not significant")
    clear = paired_difference({0: 90.0, 1: 91.0, 2: 92.0}, {0: 80.0, 1: 80.5, 2: 81.2})
    assert clear.significant and "significant at 5% (mutual is better)" in clear.sentence("mutual", "independent")
    assert "1 seed: no interval" in paired_difference({0: 1.0}, {0: 0.0}).sentence("a", "b")
    assert paired_difference({0: 1.0}, {1: 0.0}) is None


def test_summary_figures_show_every_seed_from_zero_and_paired_differences_around_zero():
    """The bar chart starts at 0 and draws each seed's run; the differences plot is symmetric about 0."""
    from types import SimpleNamespace

    from peerlearn.report import plots
    from peerlearn.report.groups import SeedGroup, differing_settings, group_scores
    from peerlearn.report.stats import compare_groups

    def run(recipe, seed, top1):
        entry = {"test": {"top1": top1}}
        return SimpleNamespace(summary={"members": {"a": entry, "b": entry}, "ensemble": entry}, settings_seed=seed)

    groups = [SeedGroup("independent", [run("independent", s, v) for s, v in ((0, .8357), (1, .8331), (2, .8383))],
                        {"recipe": "independent"}),
              SeedGroup("mutual", [run("mutual", s, v) for s, v in ((0, .8291), (1, .8249), (2, .8355))],
                        {"recipe": "mutual"})]
    fig = plots.seed_group_bars(groups, [group_scores(g) for g in groups])
    axis = fig.axes[0]
    assert axis.get_ylim()[0] == 0  # the differences are not stretched
    points = [c for c in axis.collections if len(c.get_offsets()) == 3]
    assert len(points) == 6  # every entry of both groups: its three seeds as points
    plots.close(fig)
    comparisons = compare_groups(groups, differing_settings)
    assert [(c.a_name, c.b_name, c.keys) for c in comparisons] == [("mutual", "independent", ["recipe"])]
    # a config holds its own recipe's section only: those keys do not count, the recipe tells the groups apart
    assert differing_settings({"recipe": "mutual", "mutual.weight": "1.0", "optim.lr": "0.1"},
                              {"recipe": "independent", "optim.lr": "0.1"}) == ["recipe"]
    assert differing_settings({"recipe": "mutual", "mutual.weight": "1.0"},
                              {"recipe": "mutual", "mutual.weight": "2.0"}) == ["mutual.weight"]
    ensemble = comparisons[0].differences["ensemble"]
    assert ensemble.differences == pytest.approx([-0.66, -0.82, -0.28])
    fig = plots.paired_differences(comparisons)
    low, high = fig.axes[0].get_xlim()
    assert low == pytest.approx(-high) and high >= 1.0
    plots.close(fig)


def test_collected_cka_and_subset_titles(runs):
    from peerlearn.evaluate.similarity import linear_cka

    run = collect_run(runs[1], ReportOptions(**{**FAST.__dict__, "limit": 100}))
    assert run.items == 100 and run.split_items == 450
    assert run.cka["a"]["a"] == 1.0 and 0 < run.cka["a"]["b"] < 1 and run.cka["a"]["b"] == run.cka["b"]["a"]


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_figures_as_svg_or_pdf_beside_the_page(runs, tmp_path, fmt, magic):
    out = build_report(runs[1:], tmp_path / "paper.html", FAST, figures=fmt)
    files = sorted((tmp_path / "paper_figures").iterdir())
    assert files and all(f.suffix == f".{fmt}" and f.read_bytes().startswith(magic) for f in files)
    page = out.read_text()
    assert page.count(f'href="paper_figures/') == len(files) == page.count("<img ")


def test_report_cli_default_output_and_bad_input(runs, tmp_path, capsys):
    from peerlearn.cli import main

    done = run_cli("report", str(runs[0]), "--flatness-items", "100", "--sigmas", "0", "0.05", "--draws", "1",
                   "--tsne-items", "60")
    assert done.returncode == 0, done.stderr
    assert (runs[0] / "report.html").is_file() and str(runs[0] / "report.html") in done.stdout
    assert main(["report", str(tmp_path)]) == 1
    assert "not a finished peerlearn run" in capsys.readouterr().err
    assert main(["report", str(runs[0]), "--draws", "0"]) == 2
    assert "--draws must be an integer ≥ 1, got 0" in capsys.readouterr().err


def chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_report_renders_with_its_plots_in_headless_chromium(runs, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (`make browser` installs it; it needs root or sudo): "
                    "the report's rendering in a browser is not checked")
    page = build_report(runs, tmp_path / "report.html", FAST)
    flags = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    url = page.resolve().as_uri()
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert re.search(rf'id="render-check" data-status="ok">images loaded: {IMAGES}/{IMAGES}<', dom), dom[-500:]
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in dom
    shot = tmp_path / "shot.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,4000", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (4000, 1200) and pixels[..., :3].std() > 0.05  # not a blank page
