"""The distill recipe: its step against a plain reference, frozen and cached teachers, transfer sets,
the class-bias fix for an omitted class, bad configs, and its effect end to end on digits."""

import copy
import json

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.errors import ConfigError
from peerlearn.losses import cross_entropy, soft_target_loss, teacher_probs
from conftest import run_cli, train_interrupted_at_evaluation

TEACHER = {"name": "teacher", "model": "small_cnn", "model_args": {"width": 16}, "trainable": False}
STUDENT = {"name": "student", "model": "mlp", "model_args": {"widths": [16]}}


def distill_config(tiny, members=None, **distill):
    return tiny(recipe="distill", members=members or [TEACHER, STUDENT],
                distill={"teacher_epochs": 2, "temperature": 4.0, "alpha": 0.2, **distill})


def _prepared(config):
    _, _, recipe = prepare_run(load_config(config))
    for stage in recipe.stages():
        if stage.name == "distill":
            stage.start()
    recipe.cohort.train()
    return recipe


def _batches(stream, count):
    return [b for _, b in zip(range(count), (b for _, b in stream.epoch(0)))]


def test_step_equals_alpha_ce_plus_t2_kl_reference(tiny):
    recipe = _prepared(distill_config(tiny))
    teacher, student = recipe.cohort["teacher"].model, recipe.cohort["student"].model
    reference = copy.deepcopy(student)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    for batch in _batches(recipe.train_stream, 3):
        recipe.step(batch)
        with torch.no_grad():
            q = torch.softmax(teacher(batch.x) / 4.0, dim=1)
        z = reference(batch.x)
        log_p = torch.log_softmax(z / 4.0, dim=1)
        kl = (q * (q.log() - log_p)).sum(1).mean()
        loss = 0.2 * cross_entropy(z, batch.y) + 0.8 * 16.0 * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for ours, theirs in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def _count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *args: calls.append(torch.is_inference_mode_enabled()))
    return calls


def test_teacher_is_frozen_and_its_targets_are_computed_once(tiny):
    recipe = _prepared(distill_config(tiny))
    teacher = recipe.cohort["teacher"]
    assert not teacher.trainable and teacher.optimizer is None and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    before = [p.clone() for p in teacher.model.parameters()]
    calls = _count_forwards(teacher.model)
    batches = _batches(recipe.train_stream, 4)
    for batch in batches:
        recipe.step(batch)
    assert calls == []  # every target came from the cache
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters()))
    # the cache is indexed by transfer-set position: it equals a fresh teacher prediction
    batch = batches[0]
    with torch.no_grad():
        fresh = teacher_probs([teacher.model(batch.x)], 4.0)
    torch.testing.assert_close(recipe.target_cache[batch.index], fresh)


def test_augmented_transfer_set_runs_the_teacher_every_step_in_inference_mode(tiny):
    config = distill_config(tiny)
    config["data"] = {**config["data"], "augment": {"jitter": 1}}
    recipe = _prepared(config)
    assert recipe.target_cache is None
    calls = _count_forwards(recipe.cohort["teacher"].model)
    for batch in _batches(recipe.train_stream, 3):
        recipe.step(batch)
    assert calls == [True, True, True]


def test_several_teachers_give_their_mean_probabilities(tiny):
    second = {**TEACHER, "name": "teacher2", "model_args": {"width": 8}}
    recipe = _prepared(distill_config(tiny, members=[TEACHER, second, STUDENT]))
    assert recipe.teacher_names == ["teacher", "teacher2"]
    batch = _batches(recipe.train_stream, 1)[0]
    with torch.no_grad():
        expected = (torch.softmax(recipe.cohort["teacher"].model(batch.x) / 4, 1)
                    + torch.softmax(recipe.cohort["teacher2"].model(batch.x) / 4, 1)) / 2
    torch.testing.assert_close(recipe.targets_for(batch), expected)
    z = recipe.cohort["student"].model(batch.x)
    torch.testing.assert_close(soft_target_loss(z, recipe.targets_for(batch), 4.0),
                               soft_target_loss(z, expected, 4.0))


def test_teacher_from_a_run_directory(tiny, tmp_path):
    teacher_run = peerlearn.train(tiny(recipe="independent", members=[{**TEACHER, "trainable": True}],
                                       train={"epochs": 3, "progress": "off", "threads": 1}), out=tmp_path)
    teacher_acc = teacher_run.summary["members"]["teacher"]["test"]["top1"]
    assert teacher_acc > 0.8
    config = distill_config(tiny, members=[{**TEACHER, "weights": str(teacher_run.run_dir)}, STUDENT],
                            teacher_epochs=0)
    config["train"] = {"epochs": 1, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    # the frozen teacher is scored exactly as it was at the end of its own run
    assert result.summary["members"]["teacher"]["test"]["top1"] == pytest.approx(teacher_acc)
    assert result.summary["distill"]["teacher_cache"] is True


def test_omitted_class_is_recovered_by_the_validation_bias(tiny, tmp_path):
    """Hinton et al. §3 in small: the student never sees a 3, yet with a bias fitted on validation it
    recognises most test 3s, because the teacher's soft targets told it what a 3 resembles."""
    config = distill_config(tiny, members=[TEACHER, {**STUDENT, "model_args": {"widths": [32]}}],
                            teacher_epochs=5, omit_classes=[3], fit_class_bias=True, alpha=0.1)
    config["train"] = {"epochs": 10, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    report = summary["distill"]["fitted_class_bias"]["student"]
    assert summary["distill"]["transfer_size"] < summary["sizes"]["train"]
    bias = report["bias"]["3"]
    assert bias > 0
    test = report["splits"]["test"]
    omitted = test["fitted"]["omitted_items"]
    assert test["configured"]["errors_on_omitted"] > 0.75 * omitted, test  # without the bias: few 3s are found
    assert test["fitted"]["errors_on_omitted"] < 0.5 * omitted, test  # with it: most are
    assert test["fitted"]["errors"] < test["configured"]["errors"]
    # the final evaluation applies the installed bias
    assert summary["members"]["student"]["test"]["top1"] == pytest.approx(test["fitted"]["top1"])


def test_class_bias_applies_at_prediction_only(tiny, tmp_path):
    config = distill_config(tiny, class_bias={3: 100.0})
    config["train"] = {"epochs": 1, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    test_labels = result.recipe.data.test.y
    share_of_threes = float((test_labels == 3).float().mean())
    assert result.summary["members"]["student"]["test"]["top1"] == pytest.approx(share_of_threes)
    # the teacher is not biased, and the student in train mode returns raw logits
    assert result.summary["members"]["teacher"]["test"]["top1"] > 0.5
    student = result.cohort["student"].model
    batch = _batches(result.recipe.eval_streams["test"], 1)[0]
    student.train()
    raw = student(batch.x)
    student.eval()
    torch.testing.assert_close(student(batch.x), raw + torch.eye(10)[3] * 100.0)


def test_unlabelled_transfer_set_learns_from_soft_targets_alone(tiny, tmp_path):
    config = distill_config(tiny, transfer="unlabelled", alpha=0.0, teacher_epochs=5)
    config["train"] = {"epochs": 8, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    assert result.summary["members"]["student"]["test"]["top1"] > 0.85
    log = (result.run_dir / "metrics.jsonl").read_text()
    assert "student/soft" in log and "student/ce" not in log


def test_logit_mse_and_another_dataset_as_transfer_set(tiny, tmp_path):
    other = {"source": "digits", "val_fraction": 0.0, "train_subset": 600}
    # ½‖z − v‖² is summed over classes: its gradient is larger than CE's, so the student takes a smaller lr
    student = {**STUDENT, "optim": {"lr": 0.01}}
    config = distill_config(tiny, members=[TEACHER, student], method="mse", transfer="data",
                            transfer_data=other, alpha=0.0, teacher_epochs=4)
    config["train"] = {"epochs": 6, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    assert result.summary["distill"]["transfer_size"] == 600
    assert result.summary["members"]["student"]["test"]["top1"] > 0.8


@pytest.mark.parametrize("change, message", [
    ({"members": [{**TEACHER, "trainable": True}, STUDENT], "distill": {}}, "needs a teacher"),
    ({"distill": {"teacher_epochs": 0}}, "has no 'weights'"),
    ({"distill": {"teacher_epochs": 1, "transfer": "unlabelled", "alpha": 0.5}}, "distill.alpha"),
    ({"distill": {"teacher_epochs": 1, "omit_classes": [12]}}, "distill.omit_classes"),
    ({"distill": {"teacher_epochs": 1, "fit_class_bias": True}}, "omit_classes"),
    ({"distill": {"teacher_epochs": 1, "teachers": ["nobody"]}}, "distill.teachers"),
    ({"distill": {"teacher_epochs": 1, "transfer": "data", "alpha": 0.0,
                  "transfer_data": {"source": "digits", "image_size": 12}}}, "shape"),
])
def test_bad_distill_configs_are_refused_before_training(tiny, change, message):
    config = tiny(recipe="distill", members=change.get("members", [TEACHER, STUDENT]), distill=change["distill"])
    with pytest.raises(ConfigError, match=message):
        prepare_run(load_config(config))


def test_cli_reports_a_missing_teacher_weight_with_exit_2(tmp_path):
    done = run_cli("train", "configs/mnist_kd_distilled.yaml", "members.0.weights=/nowhere/teacher",
                   "data.source=digits", "distill.teacher_epochs=0", f"--out={tmp_path}")
    assert done.returncode == 2, done.stderr
    assert "members.0.weights" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("die_at", [3, 4])  # 3: just after the teacher stage; 4: inside the distillation stage
def test_resume_across_and_inside_stages_equals_uninterrupted_run(tiny, tmp_path, monkeypatch, die_at):
    from safetensors.torch import load_file

    teacher = {**TEACHER, "model": "mlp", "model_args": {"widths": [32], "dropout": 0.2}}
    config = distill_config(tiny, members=[teacher, STUDENT], teacher_epochs=2)
    config["train"] = {"epochs": 3, "progress": "off", "threads": 1}
    full = peerlearn.train(config, out=tmp_path / "full")
    resumed = peerlearn.train(resume=train_interrupted_at_evaluation(config, tmp_path / "cut", die_at, monkeypatch))
    expected, got = load_file(str(full.run_dir / "model.safetensors")), load_file(
        str(resumed.run_dir / "model.safetensors"))
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_load_run_of_a_distilled_student_does_not_need_the_teacher_run_any_more(tiny, tmp_path):
    import shutil

    teacher_run = peerlearn.train(tiny(recipe="independent", members=[{**TEACHER, "trainable": True}],
                                       train={"epochs": 2, "progress": "off", "threads": 1}), out=tmp_path / "t")
    config = distill_config(tiny, members=[{**TEACHER, "weights": str(teacher_run.run_dir)}, STUDENT],
                            teacher_epochs=0, class_bias={3: 1.0})
    config["train"] = {"epochs": 1, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path / "s")
    shutil.rmtree(tmp_path / "t")
    _, _, recipe = peerlearn.load_run(result.run_dir)
    from peerlearn.engine.evaluation import evaluate_cohort

    scores = evaluate_cohort(recipe.cohort, recipe.eval_streams["test"], ["teacher", "student"])
    for name in ("teacher", "student"):  # the student's class bias is applied again
        assert scores[name]["top1"] == pytest.approx(result.summary["members"][name]["test"]["top1"])


def test_find_class_bias_picks_the_smallest_best_bias_by_hand():
    from peerlearn.recipes.class_bias import find_class_bias

    # class 2's logit trails the winner by 0.5, 1.5 and 3.0 on its three items; the class-0 item beats
    # class 2 by 1.0, so it turns wrong once b > 1.0.
    logits = torch.tensor([[1.0, 0.0, 0.5],   # y=2, needs b > 0.5
                           [2.0, 0.0, 0.5],   # y=2, needs b > 1.5
                           [3.5, 0.0, 0.5],   # y=2, needs b > 3.0
                           [1.5, 0.0, 0.5]])  # y=0, wrong once b > 1.0
    labels = torch.tensor([2, 2, 2, 0])
    found = find_class_bias(logits, labels, [2], grid=[0.0, 0.75, 1.25, 1.75, 3.25])
    # accuracies: 0 → 1/4, 0.75 → 2/4, 1.25 → 1/4, 1.75 → 2/4, 3.25 → 3/4
    assert found["bias"] == {2: 3.25} and found["accuracy"] == pytest.approx(0.75)
    found = find_class_bias(logits, labels, [2], grid=[0.0, 0.75, 1.25, 1.75])
    assert found["bias"] == {2: 0.75}  # ties go to the value closest to 0
    assert dict((b, a) for b, a in found["curves"][2]) == {0.0: 0.25, 0.75: 0.5, 1.25: 0.25, 1.75: 0.5}


def test_shared_regularisers_reach_the_hard_term(tiny, tmp_path):
    import torch.nn.functional as F

    config = distill_config(tiny, alpha=1.0)
    config["regularize"] = {"label_smoothing": 0.2}
    recipe = _prepared(config)
    batch = _batches(recipe.train_stream, 1)[0]
    z = recipe.cohort["student"].model(batch.x)
    loss, _ = recipe.student_loss("student", z, recipe.targets_for(batch), batch)
    torch.testing.assert_close(loss, F.cross_entropy(z, batch.y, label_smoothing=0.2))
    # the centre loss needs penultimate features: the distill steps pass them
    config["regularize"] = {"center_loss": 0.01}
    config["train"] = {"epochs": 1, "progress": "off", "threads": 1}
    result = peerlearn.train(config, out=tmp_path)
    assert result.summary["members"]["student"]["test"]["top1"] > 0.3
