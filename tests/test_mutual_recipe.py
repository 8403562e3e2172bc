"""The DML recipe: update orders against straightforward references, and its effects end to end."""

import copy

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.engine.cohort import preserved_batchnorm_stats
from peerlearn.losses import cross_entropy, mutual_mimicry, soft_probs


def _recipe(tiny, update, **mutual):
    config = load_config(tiny(recipe="mutual", members=[
        {"name": n, "model": "small_cnn", "model_args": {"width": 4}} for n in ("a", "b", "c")],
        mutual={"update": update, **mutual}))
    _, _, recipe = prepare_run(config)
    recipe.cohort.train()
    return recipe


def _batches(recipe, count):
    return [batch for _, batch in zip(range(count), (b for _, b in recipe.train_stream.epoch(0)))]


def _reference_sequential_step(models, optimizers, batch, temperature=1.0):
    """Algorithm 1 written plainly: before each member's update, recompute every peer's prediction."""
    for k, (model, optimizer) in enumerate(zip(models, optimizers)):
        peers = []
        for l, other in enumerate(models):
            if l != k:
                with torch.no_grad(), preserved_batchnorm_stats(other):
                    peers.append(soft_probs(other(batch.x), temperature))
        logits = model(batch.x)
        loss = cross_entropy(logits, batch.y) + mutual_mimicry(logits, peers, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_sequential_update_equals_recompute_everything_reference(tiny):
    recipe = _recipe(tiny, "sequential")
    models = [copy.deepcopy(m.model) for m in recipe.cohort]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    for batch in _batches(recipe, 4):
        recipe.step(batch)
        _reference_sequential_step(models, optimizers, batch)
    for member, reference in zip(recipe.cohort, models):
        for (name, ours), theirs in zip(member.model.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=f"{member.name}.{name}")


def test_simultaneous_update_gives_each_member_its_own_gradient(tiny):
    recipe = _recipe(tiny, "simultaneous")
    models = [copy.deepcopy(m.model) for m in recipe.cohort]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    for batch in _batches(recipe, 3):
        recipe.step(batch)
        logits = [m(batch.x) for m in models]
        probs = [soft_probs(z) for z in logits]
        for k, (z, optimizer) in enumerate(zip(logits, optimizers)):
            loss = cross_entropy(z, batch.y) + mutual_mimicry(z, [p for l, p in enumerate(probs) if l != k])
            optimizer.zero_grad()
            loss.backward(retain_graph=True)
            optimizer.step()
    for member, reference in zip(recipe.cohort, models):
        for ours, theirs in zip(member.model.parameters(), reference.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sequential_and_simultaneous_differ_and_independent_ignores_peers(tiny):
    seq, sim = _recipe(tiny, "sequential"), _recipe(tiny, "simultaneous")
    batch = _batches(seq, 1)[0]
    seq.step(batch)
    sim.step(batch)
    # the first member sees the same targets in both orders; the second sees refreshed ones only in sequential
    first = [torch.equal(p, q) for p, q in zip(seq.cohort["a"].model.parameters(), sim.cohort["a"].model.parameters())]
    second = [torch.equal(p, q) for p, q in zip(seq.cohort["b"].model.parameters(), sim.cohort["b"].model.parameters())]
    assert all(first) and not all(second)


@pytest.mark.parametrize("options", [{"divergence": "js"}, {"teacher": "ensemble"}, {"feature_l2": 0.1},
                                     {"temperature": 3.0}])
def test_variants_train_and_log_their_terms(tiny, tmp_path, options):
    result = peerlearn.train(tiny(recipe="mutual", mutual=options, train={"epochs": 3, "progress": "off"}),
                             out=tmp_path)
    assert min(result.member_accuracy("test").values()) > 0.5
    log = (result.run_dir / "metrics.jsonl").read_text()
    assert "a/mimicry" in log
    if "feature_l2" in options:
        assert "a/feature_l2" in log


def _entropy_of(result):
    from peerlearn.evaluate.analyses import posterior_entropy

    run = peerlearn.load_run(result.run_dir)
    return posterior_entropy(run.cohort, run.stream("train"))


def test_dml_members_end_with_higher_posterior_entropy_than_independent_ones(tiny, tmp_path):
    """The paper's analysis (Sec. 5): mutual learning keeps posteriors softer on the training data."""
    base = dict(train={"epochs": 12, "progress": "off"}, optim={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    independent = peerlearn.train(tiny(recipe="independent", **base), out=tmp_path)
    mutual = peerlearn.train(tiny(recipe="mutual", **base), out=tmp_path)
    h_ind, h_dml = _entropy_of(independent), _entropy_of(mutual)
    assert min(h_dml.values()) > max(h_ind.values()), (h_dml, h_ind)
    # and both cohorts learned the task
    assert min(mutual.member_accuracy().values()) > 0.9
    assert min(independent.member_accuracy().values()) > 0.9


def test_semi_supervised_uses_labels_only_where_kept(tiny, tmp_path):
    config = tiny(recipe="mutual", data={"source": "digits", "labelled": 0.1, "val_fraction": 0.2},
                  mutual={"mimic_on": "all"}, train={"epochs": 4, "progress": "off"})
    result = peerlearn.train(config, out=tmp_path)
    sizes = result.summary["sizes"]
    assert sizes["labelled_train"] < 0.15 * sizes["train"]
    assert sizes["labelled_train"] >= 10  # at least one per class
    assert min(result.member_accuracy().values()) > 0.3
    labelled_only = peerlearn.train({**config, "mutual": {"mimic_on": "labelled"}}, out=tmp_path)
    assert labelled_only.summary["sizes"] == sizes


@pytest.mark.parametrize("mimic_on", ["labelled", "all"])
def test_batch_without_any_label_gives_a_finite_loss(tiny, mimic_on):
    """With few labels a batch can hold none: CE and DML-labelled mimicry must then be 0, not NaN."""
    recipe = _recipe(tiny, "simultaneous", mimic_on=mimic_on)
    batch = _batches(recipe, 1)[0]
    unlabelled = copy.copy(batch)
    unlabelled.y = torch.full_like(batch.y, -1)
    log = recipe.step(unlabelled)
    assert torch.isfinite(log["loss"])
    if mimic_on == "labelled":
        assert float(log["loss"]) == 0.0
    else:
        assert float(log["loss"]) > 0.0
