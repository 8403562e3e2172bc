"""Every kind of run, read back by every command that applies to it.

Each entry of ``CASES`` is a tiny run (digits or a small CSV, a few hundred items, one or two epochs).
The runs are trained once per session, on first use, and every after-training command is run on them
in-process through the CLI's ``main``: ``evaluate`` must give each member's (and the ensemble's) top-1
of summary.json, ``analyze`` and ``report`` must finish, each export format must give the logits of
the trained module (|Δ| < 1e-4), ``probe`` must read the runs whose recipe lists it in ``Recipe.commands``
(greedy) and refuse the others with exit 2, ``--resume`` of a finished run must leave its scores alone, and
``predict`` (``run.predict`` and the CLI on image files or CSV rows) must give each member's and the ensemble's
test top-1 of summary.json. Runs on data given from Python (``UserData`` tensors or a Dataset, with members that
are the user's modules and factories) are read without that data: they are scored on it with ``evaluate --data``
semantics (``evaluate_run(data=...)``), and the commands that read the training splits refuse them with exit 2.
A new recipe or mode joins by adding one entry to ``CASES``; a command a recipe declares must be one this
file runs.
"""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch

import peerlearn
from peerlearn.cli import main

from conftest import run_cli

DATA = {"source": "digits", "batch_size": 32, "train_subset": 320, "val_size": 80, "eval_batch_size": 256}
TRAIN = {"epochs": 1, "progress": "off", "threads": 1}
CNN = {"model": "small_cnn", "model_args": {"width": 4}}
MLP = {"model": "mlp", "model_args": {"widths": [16]}}
LAYERWISE = {"model": "layerwise_cnn", "model_args": {"blocks": 2, "width": 4, "downsample_at": [1]}}
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
REGISTERED_MODULE = "matrix_registered_models"


def config(name: str, recipe: str, members: list[dict], **sections) -> dict:
    base = {"name": name, "seed": 0, "recipe": recipe, "data": dict(DATA), "members": members,
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "train": dict(TRAIN),
            "tracking": {"tensorboard": False}}
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) and isinstance(value, dict) else value
    return base


def pair(**member) -> list[dict]:
    return [{"name": "a", **CNN, **member}, {"name": "b", **CNN, **member}]


@dataclass
class Case:
    """One kind of run: how to configure it (given the session's shared folders) and what applies to it."""

    build: Callable[["Shared"], dict]
    formats: tuple[str, ...] = EXPORT_FORMATS  # export formats checked in the fast matrix
    python: Optional[Callable[["Shared"], dict]] = None  # members= and data= given to peerlearn.train


@dataclass
class Shared:
    root: Path
    runs: dict[str, "peerlearn.RunResult"] = field(default_factory=dict)

    def source(self) -> Path:
        """A one-member CNN run: the distillation teacher and the transfer backbone of the cases below."""
        if "source" not in self.runs:
            self.runs["source"] = peerlearn.train(config("source", "independent", [{"name": "a", **CNN}]),
                                                  out=self.root / "shared")
        return self.runs["source"].run_dir

    def csv(self) -> Path:
        path = self.root / "points.csv"
        if not path.exists():
            rng = np.random.default_rng(0)
            rows = ["x1,x2,x3,label"]
            for i in range(240):
                label = i % 3
                x = rng.normal(size=3) + label
                rows.append(f"{x[0]:.4f},{x[1]:.4f},{x[2]:.4f},{'abc'[label]}")
            path.write_text("\n".join(rows) + "\n")
        return path

    def registered_module(self) -> Path:
        """A module on sys.path that registers ``matrix_mlp`` from Python when imported."""
        folder = self.root / "modules"
        folder.mkdir(exist_ok=True)
        (folder / f"{REGISTERED_MODULE}.py").write_text(textwrap.dedent('''
            from peerlearn.models import register_model
            from peerlearn.models.mlp import mlp

            @register_model("matrix_mlp")
            def matrix_mlp(num_classes, in_features, hidden=12):
                return mlp(num_classes=num_classes, in_features=in_features, widths=[hidden])
        '''))
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        __import__(REGISTERED_MODULE)
        return folder


USER_MODULE = "matrix_user_nets"
USER_NETS = '''
import torch
from torch import nn
from torch.utils.data import Dataset


class UserNet(nn.Module):
    """A user's network: its own names, no peerlearn base class."""

    def __init__(self, num_classes=10, hidden=16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(self.trunk(x))


def user_factory(num_classes, hidden=12):
    return UserNet(num_classes, hidden)


class UnitImages(Dataset):
    """Float images in 0..1 (as torchvision's ToTensor gives), labels as targets."""

    def __init__(self, x, y):
        self.x, self.targets = x.float() / 255.0, y

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])
'''


def user_module(shared: "Shared"):
    """A module on sys.path with a user's network, factory and Dataset (importable again in a new process)."""
    folder = shared.root / "modules"
    folder.mkdir(exist_ok=True)
    (folder / f"{USER_MODULE}.py").write_text(textwrap.dedent(USER_NETS))
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return __import__(USER_MODULE)


def user_digits():
    """scikit-learn digits as the user would hold them: uint8 tensors, official train/test parts."""
    from peerlearn.config import DataConfig
    from peerlearn.data import load_raw

    return load_raw(DataConfig(source="digits"))


def user_tensors(shared: "Shared") -> dict:
    nets, raw = user_module(shared), user_digits()
    return {"members": {"a": nets.UserNet(), "b": nets.user_factory},
            "data": peerlearn.UserData(train=(raw.train_x, raw.train_y), test=(raw.test_x, raw.test_y),
                                       class_names=[f"d{i}" for i in range(10)])}


def user_dataset(shared: "Shared") -> dict:
    nets, raw = user_module(shared), user_digits()
    return {"members": {"a": nets.user_factory},
            "data": peerlearn.UserData(train=nets.UnitImages(raw.train_x, raw.train_y),
                                       test=nets.UnitImages(raw.test_x, raw.test_y), class_names=raw.class_names)}


def teacher(shared: Shared, name: str = "a") -> dict:
    return {"name": name, **CNN, "trainable": False, "weights": str(shared.source())}


def transfer(mode: str, backbones: int = 1, **settings) -> Callable[[Shared], dict]:
    def build(shared: Shared) -> dict:
        spec = {"source": str(shared.source())}
        backbone_list = [spec] + [{**spec, "input_size": 12, "input_pad": 2}] * (backbones - 1)
        return config(f"transfer-{mode}", "transfer", [{"name": "a", **CNN}], train={"epochs": 2},
                      transfer={"mode": mode, "backbones": backbone_list, "groups": 2,
                                "cache_dir": str(shared.root / "features"), **settings})
    return build


def greedy(k: int, cache: str) -> Callable[[Shared], dict]:
    def build(shared: Shared) -> dict:
        net = {"name": "net", **LAYERWISE, "model_args": {**LAYERWISE["model_args"], "k": k}}
        return config(f"greedy-k{k}", "greedy", [net], greedy={"cache": cache, "epochs": 1})
    return build


def registered(shared: Shared) -> dict:
    shared.registered_module()
    return config("registered", "independent", [{"name": "a", "model": "matrix_mlp", "model_args": {"hidden": 10}}])


CASES: dict[str, Case] = {
    "independent": Case(lambda s: config("independent", "independent", pair())),
    "mutual-simultaneous": Case(lambda s: config("dml", "mutual", pair())),
    "mutual-sequential": Case(lambda s: config("dml-seq", "mutual", pair(), mutual={"update": "sequential"})),
    "mutual-fused": Case(lambda s: config("dml-fused", "mutual", pair(), engine={"fused": True})),
    "mutual-semi": Case(lambda s: config("dml-semi", "mutual", pair(), data={"labelled": 0.5},
                                         mutual={"mimic_on": "all"})),
    "distill-weights": Case(lambda s: config("kd", "distill", [teacher(s), {"name": "s", **MLP}],
                                             distill={"teacher_epochs": 0, "cache_teacher": False})),
    "distill-cached": Case(lambda s: config("kd-cached", "distill", [teacher(s), {"name": "s", **MLP}],
                                            distill={"teacher_epochs": 0, "cache_teacher": True})),
    "distill-teacher-stage": Case(lambda s: config("kd-stage", "distill",
                                                   [{"name": "t", **CNN, "trainable": False}, {"name": "s", **MLP}],
                                                   distill={"teacher_epochs": 1})),
    # two students: their ensemble (not the teachers') is summary.json's and evaluate's
    "distill-two-teachers": Case(lambda s: config("kd-two", "distill",
                                                  [{"name": "t1", **CNN, "trainable": False},
                                                   {"name": "t2", **MLP, "trainable": False},
                                                   {"name": "s1", **MLP}, {"name": "s2", **CNN}],
                                                  distill={"teacher_epochs": 1})),
    # feature distillation: connectors are auxiliary modules without predictions (saved, never scored)
    "distill-fitnets": Case(lambda s: config("kd-fitnets", "distill", [teacher(s), {"name": "s", **CNN}],
                                             distill={"method": "fitnets", "fitnets": {"hint_epochs": 1}})),
    "distill-crd": Case(lambda s: config("kd-crd", "distill", [teacher(s), {"name": "s", **MLP}],
                                         distill={"method": "crd", "crd": {"negatives": 64}})),
    "greedy-k1-cache": Case(greedy(1, "auto")),
    "greedy-k2-nocache": Case(greedy(2, "off")),
    "greedy-k3-cache": Case(greedy(3, "on")),
    "transfer-features": Case(transfer("features")),
    "transfer-finetune": Case(transfer("finetune")),
    "transfer-staged": Case(transfer("staged", unfreeze_at=[1])),
    "transfer-concatenated": Case(transfer("features", backbones=2)),
    "tabular": Case(lambda s: config("tabular", "mutual", [{"name": "a", **MLP}, {"name": "b", **MLP}],
                                     data={"source": "tabular", "path": str(s.csv()), "train_subset": None,
                                           "val_size": None, "val_fraction": 0.2,
                                           "options": {"label": "label", "test_fraction": 0.25}})),
    "registered-model": Case(registered),
    "user-tensors": Case(lambda s: config("user-tensors", "mutual", [{"name": "a"}, {"name": "b"}]),
                         python=user_tensors),
    "user-dataset": Case(lambda s: config("user-dataset", "independent", [{"name": "a"}],
                                          data={"stream": True, "stream_workers": 0}), python=user_dataset),
    # online distillation: one multi-branch network (branches as views, auxiliary modules) or separate members
    "online-one": Case(lambda s: config("one", "one", [{"name": "net", **CNN}])),
    "online-cl_ilr": Case(lambda s: config("cl_ilr", "cl_ilr", [{"name": "net", **CNN}])),
    "online-okddip": Case(lambda s: config("okddip", "okddip", [{"name": "net", **CNN}])),
    "online-kdcl": Case(lambda s: config("kdcl", "kdcl", [{"name": "a", **CNN}, {"name": "b", **MLP}],
                                         data={"augment": {"crop_padding": 1}}, kdcl={"teacher": "general"})),
    "online-pcl": Case(lambda s: config("pcl", "pcl", [{"name": "net", **CNN}], data={"augment": {"flip": True}})),
}


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Shared:
    return Shared(tmp_path_factory.mktemp("matrix"))


@pytest.fixture(scope="session")
def trained(shared):
    """Train each case on first use; the same run serves every command's test."""
    def get(case: str):
        key = f"case:{case}"
        if key not in shared.runs:
            python = CASES[case].python(shared) if CASES[case].python else {}
            shared.runs[key] = peerlearn.train(CASES[case].build(shared), out=shared.root / "runs", **python)
        return shared.runs[key]
    return get


def is_python_data(case: str) -> bool:
    return CASES[case].python is not None


def stored_test_items(case: str, run) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test split, as stored (its own source, or the user's tensors for data given from Python)."""
    if is_python_data(case):
        raw = user_digits()
        return raw.test_x, raw.test_y
    return run.data.test.x, run.data.test.y


def refuses_without_its_data(case: str, capsys, *argv: str) -> bool:
    """For a run on data given from Python: the command exits 2, saying to give labelled data; True then."""
    if not is_python_data(case):
        return False
    assert main(list(argv)) == 2
    error = capsys.readouterr().err
    assert "given from Python" in error and "Traceback" not in error, error
    return True


def run_main(capsys, *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


@pytest.mark.parametrize("case", CASES)
def test_evaluate_reports_the_summary(case, trained, capsys):
    result = trained(case)
    summary = result.summary
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["finished"] and record["stage"]["index"] == len(record["stage"]["names"]) - 1
    students = [m["name"] for m in record["members"] if m["role"] == "student"]
    assert record["ensemble"] == students  # the cohort's ensemble is its students, never its teachers
    if refuses_without_its_data(case, capsys, "evaluate", str(result.run_dir), "--json"):
        x, y = stored_test_items(case, None)
        scores = peerlearn.evaluate_run(result.run_dir, data=(x, y), save=False)["classification"]
        for name, entry in summary["members"].items():
            assert scores[name]["top1"] == pytest.approx(entry["test"]["top1"], abs=1e-6), (case, name)
        return
    for split in ("test", "val"):
        evaluation = json.loads(run_main(capsys, "evaluate", str(result.run_dir), "--split", split, "--json"))
        scores = evaluation["classification"]
        assert evaluation["class_names"] == summary["class_names"]
        for name, entry in summary["members"].items():
            assert scores[name]["top1"] == pytest.approx(entry[split]["top1"], abs=1e-6), (case, split, name)
        if summary["ensemble"]:
            assert scores["ensemble"]["top1"] == pytest.approx(summary["ensemble"][split]["top1"], abs=1e-6)
        else:
            assert "ensemble" not in scores


@pytest.mark.parametrize("case", CASES)
def test_analyze_and_the_report_read_the_run(case, trained, capsys):
    from peerlearn.report import ReportOptions
    from peerlearn.report.collect import collect_run

    result = trained(case)
    if refuses_without_its_data(case, capsys, "analyze", str(result.run_dir), "--limit", "64"):
        return
    analysis = json.loads(run_main(capsys, "analyze", str(result.run_dir), "--limit", "64", "--sigmas", "0", "0.01",
                                   "--draws", "1", "--tsne-items", "0", "--json"))
    assert set(analysis["entropy"]) == set(result.summary["members"])
    # what the report computes from a run (its plots are drawn below, for a few runs at once)
    collected = collect_run(result.run_dir, ReportOptions(limit=64, flatness_items=32, sigmas=(0.0,), draws=1,
                                                          tsne_items=4, progress="off"))
    assert set(collected.confusion) >= set(result.summary["members"])
    assert collected.class_names == result.summary["class_names"]


def test_report_of_several_kinds_of_run(trained, capsys, tmp_path):
    runs = [str(trained(case).run_dir) for case in ("distill-teacher-stage", "transfer-features", "greedy-k1-cache")]
    run_main(capsys, "report", *runs, "--out", str(tmp_path / "report.html"), "--limit", "64", "--flatness-items",
             "32", "--sigmas", "0", "--draws", "1", "--tsne-items", "8", "--progress", "off")
    assert (tmp_path / "report.html").stat().st_size > 1000


def _exported_logits(fmt: str, model_path: Path, info_path: Path, inputs: torch.Tensor) -> np.ndarray:
    from peerlearn.export import formats, load_safetensors_model

    if fmt == "onnx":
        return formats.run_onnx(model_path, inputs)
    if fmt == "torchscript":
        return formats.run_torchscript(model_path, inputs)
    with torch.no_grad():  # our own export (a network of our own needs trust to be rebuilt from its JSON)
        return load_safetensors_model(info_path, trust_code=True)(inputs).numpy()


@torch.no_grad()
def _trained_logits(result, member: str, inputs: torch.Tensor) -> np.ndarray:
    """The logits of the module that training left; a features-mode transfer model, whose head was fed cached
    features, reads the images through its backbones here."""
    model = result.cohort[member].model.eval()
    head_only = getattr(model, "head_only", False)
    model.head_only = False
    try:
        return model(inputs).numpy()
    finally:
        model.head_only = head_only


def check_exports(case: str, result, formats, exporter: str, capsys, tmp_path) -> None:
    from peerlearn.api import load_run

    run = load_run(result.run_dir)
    member = next(name for name, role in run.roles.items() if role == "student")
    inputs = run.normalizer(stored_test_items(case, run)[0][:16]).float()
    reference = _trained_logits(result, member, inputs)
    for fmt in formats:
        out = tmp_path / fmt
        run_main(capsys, "export", str(result.run_dir), "--member", member, "--format", fmt, "--out", str(out),
                 "--exporter", exporter, "--check-items", "16", "--progress", "off")
        model_path = next(p for p in out.iterdir() if not p.name.endswith(".json"))
        logits = _exported_logits(fmt, model_path, Path(f"{model_path}.json"), inputs)
        assert np.abs(logits - reference).max() < 1e-4, (case, fmt)


@pytest.mark.parametrize("case", CASES)
def test_every_export_format_gives_the_run_logits(case, trained, capsys, tmp_path):
    check_exports(case, trained(case), CASES[case].formats, "legacy", capsys, tmp_path)


def write_inputs(run, x: torch.Tensor, folder: Path) -> Path:
    """Inputs as the files `peerlearn predict` reads: grayscale PNGs (one-channel uint8 images, in a subfolder:
    the folder is searched recursively) or the rows of a CSV file with the run's feature columns."""
    if run.pipeline.is_image:
        from PIL import Image

        for i, item in enumerate(x):
            (folder / "inner").mkdir(parents=True, exist_ok=True)
            Image.fromarray(item[0].numpy()).save(folder / "inner" / f"{i:03d}.png")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    names = run.pipeline.feature_names
    lines = [",".join(names)] + [",".join(repr(float(v)) for v in row) for row in x]
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder / "rows.csv"


@pytest.mark.parametrize("case", CASES)
def test_predict_gives_the_summary_scores_and_the_cli_the_same_classes(case, trained, capsys, tmp_path):
    from peerlearn.api import load_run

    result = trained(case)
    run = load_run(result.run_dir)
    x, y = stored_test_items(case, run)
    summary = result.summary

    def top1(probabilities):
        return float((probabilities.argmax(1) == y).double().mean())

    for name, entry in summary["members"].items():
        assert top1(run.predict(x, member=name)) == pytest.approx(entry["test"]["top1"], abs=1e-6), (case, name)
    ensemble = run.predict(x, batch_size=100)
    if summary["ensemble"]:
        assert top1(ensemble) == pytest.approx(summary["ensemble"]["test"]["top1"], abs=1e-6), case
    else:  # one student: the ensemble is that member
        assert torch.equal(ensemble, run.predict(x, member=run.ensemble[0], batch_size=100)), case
    source = write_inputs(run, x[:12], tmp_path / "inputs")
    out = tmp_path / "predictions.csv"
    run_main(capsys, "predict", str(result.run_dir), str(source), "--out", str(out), "--progress", "off")
    rows = out.read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == [run.class_names[int(i)] for i in ensemble[:12].argmax(1)], case


# the after-training commands this file runs on every case (evaluate, analyze, report, export, predict above)
MATRIX_COMMANDS = {"evaluate", "analyze", "report", "export", "probe", "predict"}


def test_every_command_a_recipe_declares_is_run_by_the_matrix():
    from peerlearn.recipes import RECIPE_NAMES, get_recipe

    for name in RECIPE_NAMES:
        assert set(get_recipe(name).commands) <= MATRIX_COMMANDS, name


@pytest.mark.parametrize("case", CASES)
def test_probe_reads_the_runs_of_recipes_that_list_it_and_refuses_the_others(case, trained, capsys):
    from peerlearn.recipes import get_recipe

    result = trained(case)
    if "probe" in get_recipe(result.config.recipe).commands:
        probe = json.loads(run_main(capsys, "probe", str(result.run_dir), "--limit", "200", "--json"))
        assert [row["depth"] for row in probe["depths"]] == [0, 1, 2]
        return
    assert main(["probe", str(result.run_dir), "--limit", "200"]) == 2
    error = capsys.readouterr().err
    assert f"a run of recipe {result.config.recipe!r}; it applies to runs of greedy" in error, error
    assert "Traceback" not in error and not (result.run_dir / "probe.json").exists()


@pytest.mark.parametrize("case", ["mutual-simultaneous", "distill-teacher-stage", "greedy-k2-nocache",
                                  "transfer-staged"])
def test_resume_of_a_finished_run_keeps_its_scores(case, trained):
    result = trained(case)
    before = json.loads((result.run_dir / "summary.json").read_text())
    resumed = peerlearn.train(resume=result.run_dir)
    for name, entry in before["members"].items():
        assert resumed.summary["members"][name]["test"]["top1"] == pytest.approx(entry["test"]["top1"])
    assert resumed.summary["epochs"] == before["epochs"]


def test_cli_evaluates_a_python_registered_model_in_a_fresh_process(trained, shared):
    """The run records where ``matrix_mlp`` was registered; a new process imports it from there."""
    result = trained("registered-model")
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["members"][0]["network"]["factory"] == f"{REGISTERED_MODULE}:matrix_mlp"
    import os

    os.environ["PYTHONPATH"] = str(shared.registered_module())
    try:
        process = run_cli("evaluate", str(result.run_dir), "--json")
    finally:
        del os.environ["PYTHONPATH"]
    assert process.returncode == 0, process.stderr
    top1 = json.loads(process.stdout)["classification"]["a"]["top1"]
    assert top1 == pytest.approx(result.summary["members"]["a"]["test"]["top1"])


def test_an_interrupted_run_is_readable(trained, tmp_path, monkeypatch):
    """run.json is written with every checkpoint: a run killed after its first epoch can be evaluated."""
    from conftest import train_interrupted_at_evaluation
    from peerlearn.evaluate.runner import evaluate_run

    run_dir = train_interrupted_at_evaluation(config("cut", "distill", [{"name": "t", **CNN, "trainable": False},
                                                                         {"name": "s", **MLP}],
                                                     distill={"teacher_epochs": 1}, train={"epochs": 2}),
                                              tmp_path, 2, monkeypatch)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["finished"] is False and record["stage"]["name"] == "teacher"
    assert {m["name"]: m["role"] for m in record["members"]} == {"t": "teacher", "s": "student"}
    evaluation = evaluate_run(run_dir, save=False)
    assert set(evaluation["classification"]) == {"t", "s"}  # one student: no ensemble
