"""Regression tests of issue 14's defects outside the matrix: top-k on logits, transfer's members.0.model,
a teacher named unlike its saved member, the non-main rank's log."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peerlearn.engine.checkpoint import load_weights

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.engine.evaluation import ensemble_log_probs, score, topk_accuracy
from peerlearn.errors import ConfigError
from peerlearn.evaluate.metrics import classification_metrics

from conftest import tiny_config

ONE = [{"name": "a", "model": "small_cnn", "model_args": {"width": 4}}]


def saturated_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 at 200, the label (class 9) second at −1, classes 1-8 at −5: in float32 every probability but
    class 0's underflows to exactly 0, so ranking probabilities ties classes 1-9 and puts 1-4 before 9."""
    logits = torch.full((3, 10), -5.0)
    logits[:, 0] = 200.0
    logits[:, 9] = -1.0
    return logits, torch.full((3,), 9)


def test_top5_ranks_logits_not_underflowed_probabilities():
    logits, labels = saturated_logits()
    probs = F.softmax(logits, dim=1)
    assert bool((probs[:, 1:] == 0).all())  # the tie the old ranking broke by class index
    assert topk_accuracy(probs, labels, 5) == 0.0  # what ranking probabilities gave
    assert topk_accuracy(logits, labels, 5) == 1.0
    assert score(F.log_softmax(logits, dim=1), labels)["top5"] == 1.0
    evaluated = classification_metrics(probs, labels, log_probs=F.log_softmax(logits, dim=1))
    assert evaluated["top5"] == 1.0 and evaluated["top1"] == 0.0
    assert evaluated["nll"] == pytest.approx(201.0, rel=1e-4)  # −log p(9) = 200 − (−1), no 1e-12 clamp


def test_ensemble_log_probs_is_the_log_of_the_mean_probability():
    torch.manual_seed(0)
    logits = [torch.randn(5, 4, dtype=torch.float64) for _ in range(3)]
    expected = torch.stack([F.softmax(z, 1) for z in logits]).mean(0).log()
    torch.testing.assert_close(ensemble_log_probs(logits).double(), expected, atol=1e-6, rtol=1e-6)
    # and it keeps the order of classes whose mean probability underflows
    saturated, labels = saturated_logits()
    assert topk_accuracy(ensemble_log_probs([saturated, saturated]), labels, 5) == 1.0
    assert math.isfinite(score(ensemble_log_probs([saturated, saturated]), labels)["nll"])


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    return peerlearn.train(tiny_config(members=ONE, train={"epochs": 1, "progress": "off", "threads": 1},
                                       data={"source": "digits", "train_subset": 200, "val_size": 50}),
                           out=tmp_path_factory.mktemp("source"))


def test_transfer_refuses_a_member_model_that_no_backbone_uses(source_run, tmp_path):
    transfer = {"backbones": [{"source": str(source_run.run_dir)}], "cache_dir": str(tmp_path)}
    wrong = tiny_config(recipe="transfer", members=[{"name": "a", "model": "mlp"}], transfer=transfer)
    with pytest.raises(ConfigError, match=r"members\.0\.model.*'mlp'.*small_cnn"):
        prepare_run(load_config(wrong))
    prepare_run(load_config(tiny_config(recipe="transfer", members=ONE, transfer=transfer)))  # its own: fine


def test_a_teacher_named_unlike_the_only_saved_member_takes_its_weights(source_run):
    """A run with one member gives it whatever it is called (RUN_DIR:member picks one of several: see
    tests/test_teacher_weights.py, which also covers the error naming the saved members)."""
    teacher = {"name": "teacher", **{k: v for k, v in ONE[0].items() if k != "name"}, "trainable": False,
               "weights": str(source_run.run_dir)}
    config = tiny_config(recipe="distill", members=[teacher, {"name": "s", "model": "mlp"}],
                         distill={"teacher_epochs": 0})
    _, _, recipe = prepare_run(load_config(config))
    saved = load_weights(source_run.run_dir / "model.safetensors", "a")
    for key, value in recipe.cohort["teacher"].model.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), key


def test_the_log_of_a_non_main_rank_closes_like_the_real_one():
    from peerlearn.engine.trainer import _NullLog

    log = _NullLog()
    log.close(finished=False)  # a TypeError here used to replace the real error of a failed rank
    log.close()


def test_reading_a_run_whose_dataset_changed_or_that_has_no_record_is_a_clear_error(source_run, tmp_path, capsys):
    import json
    import shutil

    from peerlearn.cli import main

    changed = Path(shutil.copytree(source_run.run_dir, tmp_path / "changed"))
    record = json.loads((changed / "run.json").read_text())
    record["data"]["sizes"]["test"] += 1
    (changed / "run.json").write_text(json.dumps(record))
    assert main(["evaluate", str(changed)]) == 2  # the edit is caught by run.json's recorded hash
    assert "does not match the SHA-256 recorded" in capsys.readouterr().err
    assert main(["trust", str(changed)]) == 0  # accepted as deliberate: the dataset check then speaks
    capsys.readouterr()
    assert main(["evaluate", str(changed)]) == 2
    assert "files changed since" in capsys.readouterr().err
    older = Path(shutil.copytree(source_run.run_dir, tmp_path / "older"))
    (older / "run.json").unlink()
    (older / "checkpoint.safetensors").unlink()
    assert main(["evaluate", str(older)]) == 1
    assert "no run.json" in capsys.readouterr().err


def test_a_run_is_read_from_its_directory_alone(source_run, tmp_path):
    """The teacher's run, the backbone's run and the feature cache may be gone: evaluation needs none of them."""
    import shutil

    from peerlearn.evaluate.runner import evaluate_run

    source = Path(shutil.copytree(source_run.run_dir, tmp_path / "source"))
    data = {"source": "digits", "train_subset": 200, "val_size": 50}
    teacher = {**ONE[0], "trainable": False, "weights": str(source)}
    distilled = peerlearn.train(tiny_config(recipe="distill", members=[teacher, {"name": "s", "model": "mlp"}],
                                            distill={"teacher_epochs": 0}, data=data), out=tmp_path / "runs")
    features = peerlearn.train(tiny_config(recipe="transfer", members=ONE, data=data, transfer={
        "mode": "features", "backbones": [{"source": str(source)}], "cache_dir": str(tmp_path / "cache")}),
        out=tmp_path / "runs")
    shutil.rmtree(source)
    shutil.rmtree(tmp_path / "cache")
    for result in (distilled, features):
        scores = evaluate_run(result.run_dir, save=False)["classification"]
        for name, entry in result.summary["members"].items():
            assert scores[name]["top1"] == pytest.approx(entry["test"]["top1"], abs=1e-6)
