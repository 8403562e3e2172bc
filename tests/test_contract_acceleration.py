"""bf16 autocast and torch.compile reach the training forward of every recipe: the executors own the forward
passes, and a recipe that calls parts of a network names them (checked on CPU, where autocast supports bf16
and compile runs with the eager backend; the config enables bf16 on CUDA only)."""
from __future__ import annotations

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from conftest import tiny_config

TEACHER = {"name": "t", "model": "small_cnn", "model_args": {"width": 8}, "trainable": False}
STUDENT = {"name": "s", "model": "mlp", "model_args": {"widths": [16]}}
NET = {"name": "net", "model": "layerwise_cnn", "model_args": {"blocks": 2, "width": 8, "k": 1}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    one = [{"name": "a", "model": "small_cnn", "model_args": {"width": 8}}]
    return peerlearn.train(tiny_config(members=one, train={"epochs": 1, "progress": "off", "threads": 1}),
                           out=tmp_path_factory.mktemp("source")).run_dir


def configs(source):
    transfer = {"backbones": [{"source": str(source)}], "mode": "finetune", "cache_dir": str(source / "cache")}
    return {
        "independent": tiny_config(recipe="independent"),
        "mutual": tiny_config(recipe="mutual"),
        "mutual-sequential": tiny_config(recipe="mutual", mutual={"update": "sequential"}),
        "distill": tiny_config(recipe="distill", members=[TEACHER, STUDENT], distill={"teacher_epochs": 1, "cache_teacher": False}),
        "greedy": tiny_config(recipe="greedy", members=[NET], greedy={"epochs": 1}),
        "transfer": tiny_config(recipe="transfer", members=[{"name": "a", "model": "small_cnn"}], transfer=transfer),
    }


RECIPES = ["independent", "mutual", "mutual-sequential", "distill", "greedy", "transfer"]


STEPPING = []  # non-empty while a training step runs (stage set-up, e.g. greedy's prefix cache, is not one)


def record(into: list, value) -> None:
    """A forward pre-hook's body: note ``value`` during a training step (returns None: inputs unchanged)."""
    if STEPPING:
        into.append(value)


def each_stage_step(recipe):
    """Start every stage in turn and take one training step in it."""
    for stage in recipe.stages():
        if stage.start is not None:
            stage.start()
        recipe.cohort.train()
        stream = stage.train_stream or recipe.train_stream
        batch = next(b for _, b in stream.epoch(0))
        STEPPING.append(stage.name)
        try:
            log = stage.step(batch)
        finally:
            STEPPING.clear()
        yield stage.name, log


@pytest.mark.parametrize("name", RECIPES)
def test_bf16_autocast_reaches_every_training_forward(source, name):
    _, _, recipe = prepare_run(load_config(configs(source)[name]))
    recipe.autocast_dtype = torch.bfloat16  # what engine.precision=bf16 sets on CUDA
    seen: list[tuple[str, bool]] = []
    for member in recipe.cohort:
        for module in member.model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.register_forward_pre_hook(
                    lambda mod, args, who=member.name: record(seen, (who, torch.is_autocast_enabled("cpu"))))
    for stage, log in each_stage_step(recipe):
        assert torch.isfinite(log["loss"]), stage
    assert seen and all(enabled for _, enabled in seen), [who for who, enabled in seen if not enabled][:5]
    if name == "distill":  # the frozen teacher's targets come from the engine's forward too
        assert {"t", "s"} <= {who for who, _ in seen}


@pytest.mark.parametrize("name", RECIPES)
def test_compile_reaches_every_training_forward(source, name):
    import torch._dynamo

    config = configs(source)[name]
    config["engine"] = {"compile": True, "compile_backend": "eager"}
    _, _, recipe = prepare_run(load_config(config))
    torch._dynamo.reset()
    captured = []
    for member in recipe.cohort:
        for module in member.model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.register_forward_pre_hook(lambda mod, args: record(captured, torch.compiler.is_compiling()))
    for stage, log in each_stage_step(recipe):
        assert torch.isfinite(log["loss"]), stage
    assert captured and all(captured), f"{captured.count(False)} of {len(captured)} forwards ran uncompiled"
