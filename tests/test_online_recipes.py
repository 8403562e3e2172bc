"""The online-distillation recipes (one, cl_ilr, okddip, kdcl, pcl) from a config: they train and learn, their
deployed network's and ensemble's rows are in the summary, a new process evaluates the same numbers, the deployed
network exports; at recipe level each loss equals its formula computed here on the recipe's own outputs, and what
must be constant is (gradient-flow checks); a config naming only recipe, data and train trains; SQL trains them."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import peerlearn
from peerlearn.cli import main
from peerlearn.engine.executors import StepOutputs
from conftest import run_cli
from test_reliability_resume import _assert_same_tensors, _run_dir, kill_and_resume

CNN = {"model": "small_cnn", "model_args": {"width": 8}}


def online_config(recipe: str, members=None, epochs: int = 2, **sections) -> dict:
    config = {"name": recipe, "seed": 0, "recipe": recipe,
              "data": {"source": "digits", "batch_size": 64, "val_fraction": 0.2},
              "members": members or [{"name": "net", **CNN}],
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "train": {"epochs": epochs, "progress": "off", "threads": 1},
              "tracking": {"tensorboard": False}}
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    return config


# recipe -> (config, the rows the summary must hold, the deployed row)
CASES = {
    "one": (online_config("one"), {"net0", "net1", "net2", "gate"}, "net0"),
    "cl_ilr": (online_config("cl_ilr"), {"net0", "net1", "net2"}, "net0"),
    "okddip": (online_config("okddip"), {"net0", "net1", "net2", "leader"}, "leader"),
    # separate members of two architectures, each on its own augmented view; the validation-fitted teacher
    "kdcl": (online_config("kdcl", members=[{"name": "a", **CNN}, {"name": "b", "model": "mlp",
                                                                   "model_args": {"widths": [32]}}],
                           epochs=3, kdcl={"teacher": "general"}, data={"augment": {"crop_padding": 1}}),
             {"a", "b"}, "a"),
    # a short run: a temporal mean of δ = 0.9 follows the network within the test's few dozen steps
    "pcl": (online_config("pcl", pcl={"ema_decay": 0.9}, data={"augment": {"crop_padding": 1}}),
            {"net0", "net1", "net2", "mean0", "mean1", "mean2", "peer_ensemble"}, "mean0"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root, runs = tmp_path_factory.mktemp("online"), {}

    def get(recipe: str):
        if recipe not in runs:
            runs[recipe] = peerlearn.train(CASES[recipe][0], out=root / recipe)
        return runs[recipe]
    return get


def top1(summary, name, split="test"):
    entry = summary["ensemble"] if name == "ensemble" else summary["members"][name]
    return entry[split]["top1"]


@pytest.mark.parametrize("recipe", CASES)
def test_recipe_trains_learns_and_its_rows_read_back_in_a_new_process(recipe, trained, tmp_path, capsys):
    run = trained(recipe)
    _, rows, deployed = CASES[recipe]
    summary = run.summary
    assert set(summary["members"]) == rows and summary["ensemble"]
    assert summary["deployed"] == deployed
    assert top1(summary, deployed) > 0.5 and top1(summary, "ensemble") > 0.5  # chance is 0.1
    record = json.loads((run.run_dir / "run.json").read_text())
    students = [m["name"] for m in record["members"] if m["role"] == "student"]
    assert record["ensemble"] == students
    done = run_cli("evaluate", str(run.run_dir), "--json")
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)["classification"]
    assert set(scores) == rows | {"ensemble"}
    for name in rows | {"ensemble"}:
        assert scores[name]["top1"] == pytest.approx(top1(summary, name), abs=1e-6), name
    assert main(["export", str(run.run_dir), "--member", deployed, "--format", "onnx", "--out",
                 str(tmp_path / "x"), "--check-items", "16", "--progress", "off"]) == 0
    assert (tmp_path / "x" / f"{deployed}.onnx").is_file()
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ one step's loss
def step_outputs(run):
    """The recipe's training forward on one batch (train mode), as the executor gives it to ``losses``."""
    recipe = run.recipe
    recipe.cohort.train()
    _, batch = next(iter(recipe.train_stream.epoch(0)))
    out = StepOutputs()
    members = recipe.step_members()
    for member in members:
        out.set(member.name, *recipe.forward(member, recipe.member_input(member, batch)))
    return recipe, batch, out, [m.name for m in members]


def kl(target_logits, logits, T):
    """KL(softmax(v/T) ‖ softmax(z/T)) summed over classes, mean over items (written out here)."""
    q = torch.softmax(target_logits / T, -1)
    return (q * (torch.log(q) - torch.log_softmax(logits / T, -1))).sum(-1).mean()


def ce(logits, y):
    return -torch.log_softmax(logits, -1)[torch.arange(len(y)), y].mean()


def test_one_loss_is_the_formula_and_the_teacher_is_constant(trained):
    recipe, batch, out, names = step_outputs(trained("one"))
    z, y, T = out.logits["net"], batch.y, recipe.settings.temperature
    gate_module = recipe.cohort["gate"].model
    g = gate_module(recipe.trunk_output)
    assert g.shape == (len(y), 3) and torch.allclose(g.sum(1), torch.ones(len(y)))
    z_e = (g.T[:, :, None] * z).sum(0)
    expected = sum(ce(z[k], y) for k in range(3)) + ce(z_e, y) + T**2 * sum(kl(z_e, z[k], T) for k in range(3))
    loss, parts = recipe.losses(out, batch, names)["net"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"ce", "ce_ensemble", "kl"}
    # the gate learns from CE(z_e, y) alone: the teacher is a constant in the KL terms
    gate_params = list(gate_module.parameters())
    from_loss = torch.autograd.grad(loss, gate_params, retain_graph=True)
    from_ce = torch.autograd.grad(ce(z_e, y), gate_params, retain_graph=True)
    for a, b in zip(from_loss, from_ce):
        torch.testing.assert_close(a, b)
    assert any(bool(a.abs().sum() > 0) for a in from_loss)  # and it does learn


def test_one_gate_is_stepped_and_the_gated_ensemble_is_a_row(trained):
    run = trained("one")
    gate = run.recipe.cohort["gate"]
    fresh = run.recipe.build_auxiliary("gate", gate.info["spec"])
    assert not torch.equal(fresh.fc.weight, gate.model.fc.weight.detach().cpu())
    assert gate.optimizer is not None
    record = json.loads((run.run_dir / "run.json").read_text())
    rows = {m["name"]: m for m in record["members"]}
    assert rows["net"]["role"] == "multibranch" and rows["net"]["network"]["kind"] == "multibranch"
    assert rows["net"]["network"]["branches"] == 3
    assert rows["gate"]["predicts"] and rows["net1"]["view"] == {"of": "net", "branch": 1}


def test_one_deploys_the_gated_ensemble_when_asked(tmp_path):
    run = peerlearn.train(online_config("one", epochs=1, one={"deploy": "gate", "branches": 2}), out=tmp_path)
    assert run.summary["deployed"] == "gate" and set(run.summary["members"]) == {"net0", "net1", "gate"}


def test_cl_ilr_loss_is_the_formula_and_the_shared_layers_get_the_mean_gradient(trained):
    recipe, batch, out, names = step_outputs(trained("cl_ilr"))
    z, y, T, beta = out.logits["net"], batch.y, recipe.settings.temperature, recipe.settings.beta
    H = z.shape[0]
    expected = 0
    for h in range(H):
        consensus = (z.detach().sum(0) - z[h].detach()) / (H - 1)  # the other heads' mean logits, constant
        expected = expected + (1 - beta) * ce(z[h], y) + beta * T**2 * kl(consensus, z[h], T)
    loss, _ = recipe.losses(out, batch, names)["net"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    net = recipe.owner.network
    assert net.trunk_grad_scale == pytest.approx(1 / 3)
    trunk, head = net.trunk.body[0][0].weight, net.branches[1].classifier.weight
    scaled = torch.autograd.grad(loss, [trunk, head])
    net.trunk_grad_scale = 1.0
    try:
        recipe, batch, out, names = step_outputs(trained("cl_ilr"))
        unscaled = torch.autograd.grad(recipe.losses(out, batch, names)["net"][0], [trunk, head])
    finally:
        net.trunk_grad_scale = 1 / 3
    torch.testing.assert_close(scaled[0], unscaled[0] / 3, rtol=1e-4, atol=1e-7)  # the heads' mean, not their sum
    torch.testing.assert_close(scaled[1], unscaled[1], rtol=1e-4, atol=1e-7)  # a head's own gradient unchanged


def test_okddip_loss_is_the_formula_and_the_projections_learn(trained):
    recipe, batch, out, names = step_outputs(trained("okddip"))
    z, h, y, T = out.logits["net"], out.features["net"], batch.y, recipe.settings.temperature
    peers, leader = z[:3], z[3]
    projections = recipe.cohort["attention"].model
    q, k = projections.query(h[:3]), projections.key(h[:3])  # [K, B, d]
    energy = torch.einsum("ibd,jbd->bij", q, k).masked_fill(torch.eye(3, dtype=torch.bool), float("-inf"))
    a = torch.softmax(energy, -1)  # [B, K, K], a_ii = 0
    assert torch.all(torch.diagonal(a, dim1=1, dim2=2) == 0)
    targets = torch.einsum("bij,jbc->ibc", a, peers)
    expected = (sum(ce(peers[i], y) for i in range(3)) + ce(leader, y)
                + T**2 * (sum(kl(targets[i], peers[i], T) for i in range(3)) + kl(peers.mean(0), leader, T)))
    loss, parts = recipe.losses(out, batch, names)["net"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"ce_peers", "ce_leader", "kl_peers", "kl_leader"}
    grads = torch.autograd.grad(loss, list(projections.parameters()))
    assert all(bool(g.abs().sum() > 0) for g in grads)  # the targets keep their graph: L and E learn


def test_kdcl_members_see_their_own_views_and_learn_from_the_min_logit_teacher(trained):
    recipe, batch, out, names = step_outputs(trained("kdcl"))
    views = [recipe.member_input(recipe.cohort[name], batch) for name in names]
    assert torch.equal(views[0], batch.x) and not torch.equal(views[0], views[1])  # view 1: its own crop
    assert torch.equal(views[1], recipe.member_input(recipe.cohort["b"], batch))  # the same draw within a step
    z, y, T = torch.stack([out.logits[n] for n in names]), batch.y, recipe.settings.temperature
    shifted = z.detach() - z.detach()[:, torch.arange(len(y)), y][:, :, None]  # each member's target logit → 0
    teacher = shifted.min(0).values
    assert torch.all(teacher[torch.arange(len(y)), y] == 0)
    recipe.config.kdcl.teacher = "min_logit"
    try:
        named = recipe.losses(out, batch, names)
    finally:
        recipe.config.kdcl.teacher = "general"
    for k, name in enumerate(names):
        expected = ce(z[k], y) + T**2 * kl(teacher, z[k], T)
        assert named[name][0].item() == pytest.approx(expected.item(), rel=1e-5)
        grads = torch.autograd.grad(named[name][0], [out.logits[n] for n in names], retain_graph=True,
                                    allow_unused=True)
        assert bool(grads[k].abs().sum() > 0)  # the teacher is a constant: a member's loss reaches it alone
        assert all(g is None or bool(g.abs().sum() == 0) for j, g in enumerate(grads) if j != k)


def test_kdcl_general_weights_are_the_best_mixture_on_the_validation_split(trained):
    run = trained("kdcl")
    recipe = run.recipe
    assert recipe.weights_epoch == 2 and run.summary["kdcl_weights"] == pytest.approx(recipe.weights.tolist(),
                                                                                       abs=1e-6)
    recipe.trainer.position.global_epoch = 5  # a new epoch: the weights are refitted from the members now
    weights = recipe.general_weights(2)
    logits = []
    with torch.no_grad():
        for name in ("a", "b"):
            model = recipe.cohort[name].model.eval()
            logits.append(torch.cat([model(b.x) for _, b in recipe.eval_streams["val"].epoch(0)]))
    y = recipe.data.val.y
    grid = torch.linspace(0, 1, 2001)
    losses = torch.stack([F.cross_entropy(w * logits[0] + (1 - w) * logits[1], y) for w in grid])
    best = grid[losses.argmin()]
    assert weights.sum().item() == pytest.approx(1.0) and weights[0].item() == pytest.approx(best.item(), abs=2e-3)
    assert recipe.weights_epoch == 5


def test_pcl_loss_is_the_formula_and_the_temporal_mean_is_an_average_never_trained(trained):
    from peerlearn.losses import ema_decay

    recipe, batch, out, names = step_outputs(trained("pcl"))
    z, h, y, T = out.logits["net"], out.features["net"], batch.y, recipe.settings.temperature
    views = recipe.views
    assert views.shape[0] == 3 and torch.equal(views[0], batch.x) and not torch.equal(views[1], views[2])
    z_e = recipe.cohort["peer_ensemble"].model.fc(torch.cat([h[0], h[1], h[2]], dim=1))
    average = recipe.cohort["ema"].model
    assert not average.training
    with torch.no_grad():
        z_mean = torch.stack([average.branch(k)(views[k]) for k in range(3)])  # branch k of the mean on view k
    expected = sum(ce(z[k], y) for k in range(3)) + ce(z_e, y) + T**2 * sum(kl(z_e, z[k], T) for k in range(3))
    expected = expected + T**2 * sum(kl(z_mean[m], z[k], T) for k in range(3) for m in range(3) if m != k) / 2
    loss, parts = recipe.losses(out, batch, names)["net"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"ce", "ce_ensemble", "kl_ensemble", "kl_mean"}
    # the ensemble teacher learns from its CE only (a constant in the KL terms)
    classifier = list(recipe.cohort["peer_ensemble"].model.parameters())
    for a, b in zip(torch.autograd.grad(loss, classifier, retain_graph=True),
                    torch.autograd.grad(ce(z_e, y), classifier, retain_graph=True)):
        torch.testing.assert_close(a, b)
    # one whole step: the temporal mean gets no gradient and equals δ_t θ'_{t−1} + (1 − δ_t) θ_t
    before = {k: v.clone() for k, v in average.named_parameters()}
    step = recipe.trainer.position.global_step
    recipe.step(batch)
    decay = ema_decay(step, recipe.settings.ema_decay)
    network = dict(recipe.owner.network.named_parameters())
    for key, value in average.named_parameters():
        assert value.grad is None and not value.requires_grad
        torch.testing.assert_close(value, decay * before[key] + (1 - decay) * network[key].detach())
    for key, value in average.named_buffers():
        assert torch.equal(value, dict(recipe.owner.network.named_buffers())[key])  # BN statistics copied


def test_views_reach_the_trunk_in_the_batch_memory_layout(trained):
    """Stacking the views (and flattening them for the temporal mean) must not turn a channels-last batch into NCHW:
    on a CPU max-pooling an NCHW tensor costs about ten times the channels-last one (PCL's step was 1.7× DML's)."""
    from peerlearn.memory_format import flatten_batches, is_channels_last, stack_like

    nchw = torch.randn(4, 3, 5, 5)
    assert not is_channels_last(stack_like([nchw, nchw + 1], nchw)[1])
    like = torch.randn(4, 5, 5, 1).permute(0, 3, 1, 2)  # one channel, channels-last strides (as batches arrive)
    assert torch.stack([like, like + 1])[1].stride() != like.stride()  # a plain stack drops the layout
    stacked = stack_like([like, like + 1], like)
    assert stacked[1].stride() == like.stride() and torch.equal(stacked[1], like + 1)
    assert is_channels_last(flatten_batches(stacked)) and torch.equal(flatten_batches(stacked)[4:], like + 1)

    run = trained("pcl")
    seen, seen_by_mean = [], []

    def first_conv(network):
        return next(m for m in network.trunk.modules() if isinstance(m, torch.nn.Conv2d))

    hooks = [first_conv(run.recipe.owner.network).register_forward_pre_hook(
                 lambda module, inputs: seen.append(inputs[0].stride())),
             first_conv(run.recipe.cohort["ema"].model).register_forward_pre_hook(
                 lambda module, inputs: seen_by_mean.append(inputs[0].stride()))]
    try:
        recipe, batch, out, names = step_outputs(run)
        recipe.losses(out, batch, names)  # the temporal mean's trunk reads the K views as one batch
    finally:
        for hook in hooks:
            hook.remove()
    assert batch.x.stride(1) == 1  # the batch arrives channels-last
    assert len(seen) == 3 and all(stride[1] == 1 for stride in seen)
    assert len(seen_by_mean) == 1 and seen_by_mean[0][1] == 1


# ------------------------------------------------------------------------------------------------ reliability
@pytest.mark.parametrize("recipe", ["one", "kdcl", "pcl"])
def test_killed_and_resumed_runs_equal_an_uninterrupted_one(recipe, tmp_path):
    config = copy.deepcopy(CASES[recipe][0])
    config["train"]["checkpoint_every_steps"] = 2
    config["data"]["augment"] = {"crop_padding": 1}  # each view's draw must repeat after a resume
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    full = peerlearn.train(config, out=tmp_path / "full")
    kill_and_resume(path, tmp_path / "cut", kills=2, total_steps=full.summary["steps"], seed=5)
    cut = _run_dir(tmp_path / "cut")
    _assert_same_tensors(full.run_dir / "model.safetensors", cut / "model.safetensors")
    _assert_same_tensors(full.run_dir / "checkpoint.safetensors", cut / "checkpoint.safetensors")


@pytest.mark.parametrize("recipe", ["one", "cl_ilr", "pcl"])
def test_early_stopping_watches_a_branch(recipe, tmp_path):
    config = online_config(recipe, epochs=3, regularize={"early_stopping": {"enabled": True, "of": "ensemble",
                                                                            "patience": 1}})
    run = peerlearn.train(config, out=tmp_path)
    assert run.summary["early_stopping"]["metric"] == "val/ensemble/top1"
    assert run.summary["early_stopping"]["best_epoch"] is not None


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("recipe, rows", [("one", {"net0", "net1", "net2", "gate"}),
                                          ("okddip", {"net0", "net1", "net2", "leader"}),
                                          ("kdcl", {"m0", "m1", "m2"}),
                                          ("pcl", {"net0", "net1", "net2", "mean0", "mean1", "mean2",
                                                   "peer_ensemble"})])
def test_a_config_naming_only_recipe_data_and_train_trains(recipe, rows, tmp_path):
    config = {"recipe": recipe, "data": {"source": "digits", "train_subset": 256},
              "train": {"epochs": 1, "progress": "off", "threads": 1}}
    run = peerlearn.train(config, out=tmp_path)
    assert set(run.summary["members"]) == rows
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert [m["name"] for m in saved["members"]] == [m.name for m in run.config.members]
    assert saved["members"][0]["model"] == "small_cnn"  # 8×8 grey images: the small CNN


def test_wrong_cohorts_are_refused_before_training(tmp_path):
    from peerlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="members.0.model.*'inception_v1'.*no multi-branch form"):
        peerlearn.train(online_config("one", members=[{"name": "net", "model": "inception_v1"}]), out=tmp_path)
    with pytest.raises(ConfigError, match="takes one trainable member"):
        peerlearn.train(online_config("one", members=[{"name": "a", **CNN}, {"name": "b", **CNN}]), out=tmp_path)
    with pytest.raises(ConfigError, match="regularize.label_smoothing"):
        peerlearn.train(online_config("one", regularize={"label_smoothing": 0.1}), out=tmp_path)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ SQL
@pytest.mark.parametrize("recipe, rows", [("one", {"net0", "net1", "net2", "gate"}), ("kdcl", {"m0", "m1", "m2"})])
def test_sql_trains_an_online_recipe_on_a_query(recipe, rows, tmp_path):
    """Tabular rows: a multi-branch mlp (hidden layers 1 shared, the last one per branch), or separate mlps."""
    pytest.importorskip("sqlglot")
    import peerlearn.sql

    url = peerlearn.sql.create_demo_db(tmp_path / "demo.db")
    statement = (f"SELECT * FROM wine WHERE id % 5 != 0 TO TRAIN {recipe} WITH train.epochs = 3, "
                 "data.batch_size = 16, tracking.tensorboard = false, train.threads = 1 "
                 f"LABEL cultivar INTO wine_{recipe};")
    result = peerlearn.sql.run(statement, db=url, models=tmp_path / "models")
    summary = result.details["summary"]
    assert set(summary["members"]) == rows
    assert summary["ensemble"]["test"]["top1"] > 0.6  # three cultivars
    config = yaml.safe_load((tmp_path / "models" / f"wine_{recipe}" / "config.yaml").read_text())
    assert [m["model"] for m in config["members"]] == ["mlp"] * len(config["members"])
    assert config["members"][0]["model_args"] == {"widths": [800, 800]}
