"""Early stopping composes with stages: each stage compares its own epochs and restores its own best weights.

The two failures it replaces: greedy restored a stage-1 snapshot into the final classifier (its best
validation score was stage 1's), and distillation with a teacher stage compared the teachers' mean with
the teachers' + students' mean, stopped, and ended with an untrained student.
"""

import pytest

import peerlearn

from conftest import tiny_config

STOPPING = {"early_stopping": {"enabled": True, "patience": 1, "of": "mean"}}


def best_record(result, stage: str, epoch: int) -> dict:
    return next(h for h in result.recipe.trainer.history if h["stage"] == stage and h["epoch"] == epoch)


def test_greedy_restores_the_last_stage_best_into_the_final_classifier(tmp_path):
    # block 0 learns; block 1 barely moves (lr 1e-5), so the run's best score overall is in stage block0: the
    # final classifier (blocks 0-1 and head 1) must still get stage block1's best weights, not block0's snapshot
    net = {"name": "net", "model": "layerwise_cnn", "model_args": {"blocks": 2, "width": 8, "downsample_at": [1]}}
    config = tiny_config(recipe="greedy", members=[net], regularize=STOPPING,
                         greedy={"epochs": 3, "stages": {1: {"optim": {"lr": 1e-5}}}},
                         data={"source": "digits", "batch_size": 32, "train_subset": 400, "val_size": 100})
    result = peerlearn.train(config, out=tmp_path)
    stopping = result.summary["early_stopping"]
    assert stopping["stage"] == "block1" and set(stopping["stages"]) == {"block0", "block1"}
    stage0_best = best_record(result, "block0", stopping["stages"]["block0"]["best_epoch"])["val"]["net"]["top1"]
    final = result.summary["members"]["net"]["val"]["top1"]
    best = best_record(result, "block1", stopping["best_epoch"])["val"]["net"]["top1"]
    assert final == pytest.approx(best)  # the restored weights are those of stage block1's best epoch
    assert stage0_best > final  # (so restoring the overall best would have been block0's snapshot)
    assert 1 <= stopping["stage_epoch"] <= 3 and stopping["restored_best"] is True


def test_distill_with_a_teacher_stage_ends_with_a_trained_student(tmp_path):
    teacher = {"name": "t", "model": "small_cnn", "model_args": {"width": 8}, "trainable": False}
    student = {"name": "s", "model": "mlp", "model_args": {"widths": [32]}}
    config = tiny_config(recipe="distill", members=[teacher, student], regularize=STOPPING,
                         distill={"teacher_epochs": 3, "temperature": 4.0, "alpha": 0.5},
                         train={"epochs": 3, "progress": "off", "threads": 1})
    result = peerlearn.train(config, out=tmp_path)
    stopping = result.summary["early_stopping"]
    assert stopping["stage"] == "distill" and set(stopping["stages"]) == {"teacher", "distill"}
    student_top1 = result.summary["members"]["s"]["val"]["top1"]
    assert student_top1 > 0.7  # trained (an untrained student scores about 0.1)
    best = best_record(result, "distill", stopping["best_epoch"])
    assert student_top1 == pytest.approx(best["val"]["s"]["top1"])
    # the distillation stage ran: the student was compared with itself, not with the teacher stage's mean
    assert any(h["stage"] == "distill" for h in result.recipe.trainer.history)
    assert result.summary["epochs"] > 3
