"""`peerlearn evaluate` and `peerlearn analyze` (CKA, t-SNE) on a tiny trained run."""

import json

import numpy as np
import torch
import pytest

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.cli import main
from peerlearn.evaluate.embedding import load_embedding


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return peerlearn.train(tiny_config(recipe="mutual"), out=tmp_path_factory.mktemp("runs")).run_dir


def test_evaluate_json_matches_training_summary(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    section = result["classification"]
    assert set(section) == {"a", "b", "ensemble"} and result["retrieval"] is None
    for name in ("a", "b"):
        assert section[name]["top1"] == pytest.approx(summary["members"][name]["test"]["top1"], abs=1e-6)
        assert section[name]["top5"] == pytest.approx(summary["members"][name]["test"]["top5"], abs=1e-6)
    assert section["ensemble"]["top1"] == pytest.approx(summary["ensemble"]["test"]["top1"], abs=1e-6)
    for scores in section.values():
        confusion = np.array(scores["confusion"])
        assert confusion.shape == (10, 10) and confusion.sum() == result["items"] == summary["sizes"]["test"]
        assert np.trace(confusion) / confusion.sum() == pytest.approx(scores["top1"])
        assert 0.5 < scores["roc_auc_macro"] <= 1.0  # trained members rank classes far better than chance
        assert np.mean([c["f1"] for c in scores["per_class"]]) == pytest.approx(scores["macro_f1"])
    assert json.loads((run_dir / "evaluation_test.json").read_text())["classification"]["a"]["top1"] == section["a"]["top1"]


def test_evaluate_table_member_and_split(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--split", "val", "--member", "b"]) == 0
    out = capsys.readouterr().out
    assert "classification on the val split" in out and "macro F1" in out and "ROC-AUC" in out
    assert "b: confusion matrix" in out and "ensemble" not in out and "\na " not in out


def test_evaluate_bad_input_exits_2_without_traceback(run_dir, tmp_path, capsys):
    done = run_cli("evaluate", str(run_dir), "--member", "nobody")
    assert done.returncode == 2 and "no member 'nobody'" in done.stderr and "Traceback" not in done.stderr
    assert main(["evaluate", str(tmp_path)]) != 0
    assert "not a peerlearn run directory" in capsys.readouterr().err


def test_analyze_adds_cka_and_saves_tsne(run_dir, capsys):
    assert main(["analyze", str(run_dir), "--sigmas", "0", "0.01", "--draws", "1", "--limit", "300",
                 "--tsne-items", "200", "--perplexity", "20"]) == 0
    out = capsys.readouterr().out
    assert "linear CKA" in out and "t-SNE of a, b on 200 items" in out
    analysis = json.loads((run_dir / "analysis.json").read_text())
    cka = analysis["cka"]
    assert cka["a"]["a"] == 1.0 and cka["a"]["b"] == cka["b"]["a"]
    assert 0.0 < cka["a"]["b"] < 1.0
    tsne = load_embedding(run_dir)
    assert tsne["members"] == ["a", "b"] and tsne["coordinates"]["a"].shape == (200, 2)
    assert len(tsne["labels"]) == 200 and tsne["class_names"][:2] == ["0", "1"]


def test_cka_untrained_below_independent_below_mutual(run_dir, tmp_path):
    """CKA between two members' features rises with training from two random initialisations, and more with
    mutual learning, which pulls the members' predictions (and so their features) together."""
    from peerlearn.analysis_runner import analysis_stream, feature_analyses
    from peerlearn.api import load_run, prepare_run

    def cka(recipe):
        return feature_analyses(recipe, analysis_stream(recipe, "test"), ["a", "b"], tsne_items=0)[0]["a"]["b"]

    mutual = load_run(run_dir)
    untrained = load_run(run_dir)
    untrained.cohort = prepare_run(mutual.config)[2].cohort  # the members' initial weights
    independent = load_run(peerlearn.train(tiny_config(recipe="independent"), out=tmp_path).run_dir)
    assert cka(untrained) + 0.1 < cka(independent) < cka(mutual) - 0.1


def test_a_run_stream_is_iterable_as_the_docs_show(run_dir):
    """docs/runs.md: `for batch in run.stream("test", limit=...)` gives the split's items in order, batched."""
    run = peerlearn.load_run(run_dir)
    batches = list(run.stream("test", limit=150))
    assert [len(b.y) for b in batches] == [len(b.x) for b in batches] and sum(len(b.y) for b in batches) == 150
    assert torch.equal(torch.cat([b.index for b in batches]).cpu(), torch.arange(150))
    assert torch.equal(torch.cat([b.y for b in batches]).cpu(), run.split("test").y[:150])
    logits = torch.cat([run.cohort["a"].model(b.x) for b in batches])
    assert logits.shape == (150, 10)
