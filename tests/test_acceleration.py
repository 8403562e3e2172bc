"""engine options: CUDA-only paths are ignored with a warning on CPU; the code paths themselves on CPU."""

import pytest
import torch

import peerlearn
from peerlearn.api import prepare_run
from peerlearn.config import load_config
from peerlearn.data.augment import BatchAugment
from peerlearn.data.batches import BatchStream
from peerlearn.errors import ConfigError
from peerlearn.memory_format import is_channels_last


@pytest.mark.parametrize("option, value", [("precision", "bf16"), ("pin_memory", True)])
def test_cuda_only_options_warn_and_are_ignored_on_cpu(tiny, option, value):
    config = load_config(tiny(recipe="mutual", train={"device": "cpu", "threads": 1, "progress": "off"},
                              engine={option: value}))
    with pytest.warns(UserWarning, match=f"engine.{option}.*needs a CUDA device"):
        _, device, recipe = prepare_run(config)
    assert device.type == "cpu"
    assert recipe.autocast_dtype is None
    assert not recipe.train_stream.on_host


@pytest.mark.parametrize("asked, expected", [(None, True), (True, True), (False, False)])
def test_channels_last_is_on_by_default_on_cpu_for_convolutional_image_cohorts(tiny, asked, expected):
    engine = {} if asked is None else {"channels_last": asked}
    config = load_config(tiny(recipe="mutual", train={"device": "cpu", "threads": 1, "progress": "off"},
                              engine=engine))
    _, _, recipe = prepare_run(config)
    weights = [p for m in recipe.cohort for p in m.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights and all(is_channels_last(p) for p in weights) == expected
    assert recipe.normalizer.channels_last == expected
    batch = next(b for _, b in recipe.train_stream.epoch(0))
    if expected:  # one channel: the strides say which layout, not is_contiguous (without it, either can come)
        assert is_channels_last(batch.x)
    log = recipe.step(batch)
    assert torch.isfinite(log["loss"])


def test_channels_last_stays_off_for_networks_without_convolutions(tiny):
    config = load_config(tiny(recipe="mutual", members=[{"name": "a", "model": "mlp"}, {"name": "b", "model": "mlp"}]))
    _, _, recipe = prepare_run(config)
    assert not recipe.normalizer.channels_last


def test_channels_last_runs_save_contiguous_weights_and_resume_to_the_same_numbers(tiny, tmp_path):
    """The default CPU layout reaches every file a run writes (safetensors refuses non-contiguous tensors) and a
    resumed run continues exactly; the weights read back equal the trained ones."""
    config = tiny(recipe="mutual", train={"epochs": 2, "progress": "off", "threads": 1})
    whole = peerlearn.train(config, out=tmp_path / "whole")
    assert whole.recipe.normalizer.channels_last
    first = peerlearn.train({**config, "train": {**config["train"], "epochs": 1}}, out=tmp_path / "part")
    resumed = peerlearn.train(resume=first.run_dir, out=tmp_path / "part", changes=["train.epochs=2"])
    for a, b in zip(whole.recipe.cohort, resumed.recipe.cohort):
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(x, y), name
    _, _, loaded = peerlearn.load_run(whole.run_dir)
    for a, b in zip(whole.recipe.cohort, loaded.cohort):
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(x, y), name


def test_engine_values_are_validated(tiny):
    with pytest.raises(ConfigError, match="engine.precision.*'fp32'"):
        load_config(tiny(engine={"precision": "fp16"}))
    with pytest.raises(ConfigError, match="engine.backend"):
        load_config(tiny(engine={"backend": "mpi"}))


def test_host_memory_stream_draws_the_same_batches(tiny):
    _, device, recipe = prepare_run(load_config(tiny()))
    split = recipe.data.train
    augment = BatchAugment(crop_padding=1, flip=True)
    on_device = BatchStream(split, 32, recipe.normalizer, device, seed=3, augment=augment, drop_last=True)
    on_host = BatchStream(split, 32, recipe.normalizer, device, seed=3, augment=augment, drop_last=True)
    on_host.keep_on_host(pin=False)  # pinning needs CUDA; the gather-then-copy path is the same
    for (_, a), (_, b) in zip(on_device.epoch(1), on_host.epoch(1)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.index, b.index)


def test_bf16_autocast_path_runs_forward_in_bf16_and_losses_in_fp32(tiny):
    """CPU autocast supports bf16, so the code path can be checked here (the config only enables it on CUDA)."""
    _, _, recipe = prepare_run(load_config(tiny(recipe="mutual")))
    recipe.cohort.train()
    batch = next(b for _, b in recipe.train_stream.epoch(0))
    member = recipe.cohort["a"]
    full, _ = recipe.forward(member, batch.x)
    recipe.autocast_dtype = torch.bfloat16
    with recipe.autocast():
        inner = member.model(batch.x)
    half, _ = recipe.forward(member, batch.x)
    assert inner.dtype == torch.bfloat16 and half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.1  # bf16 rounding, same function
    log = recipe.step(batch)
    assert torch.isfinite(log["loss"])


def test_channels_last_inputs_from_the_normalizer(tiny):
    _, _, recipe = prepare_run(load_config(tiny()))
    recipe.normalizer.channels_last = True
    batch = next(b for _, b in recipe.train_stream.epoch(0))
    assert batch.x.is_contiguous(memory_format=torch.channels_last)
    model = recipe.cohort["a"].model.to(memory_format=torch.channels_last)
    recipe.normalizer.channels_last = False
    plain = next(b for _, b in recipe.train_stream.epoch(0))
    torch.testing.assert_close(model(batch.x), model(plain.x), rtol=1e-4, atol=1e-5)


def _compiled_steps(tiny, backend):
    config = load_config(tiny(recipe="mutual", engine={"compile": True, "compile_backend": backend}))
    _, _, compiled = prepare_run(config)
    _, _, eager = prepare_run(load_config(tiny(recipe="mutual")))
    for recipe in (compiled, eager):
        recipe.cohort.train()
    assert all(m.model._compiled_call_impl is not None for m in compiled.cohort)
    for _, batch in zip(range(3), (b for _, b in eager.train_stream.epoch(0))):
        compiled.step(batch)
        eager.step(batch)
    for a, b in zip(compiled.cohort, eager.cohort):
        for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_compile_option_compiles_members_and_keeps_the_numbers(tiny):
    _compiled_steps(tiny, "aot_eager")  # graph capture + autograd tracing, no code generation: fast


@pytest.mark.slow  # inductor generates and builds C++ kernels: tens of seconds on a CPU
def test_compile_with_inductor_keeps_the_numbers(tiny):
    _compiled_steps(tiny, "inductor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_paths_train(tiny, tmp_path):
    config = tiny(recipe="mutual", train={"device": "cuda", "epochs": 3, "progress": "off"},
                  engine={"precision": "bf16", "channels_last": True, "pin_memory": True})
    result = peerlearn.train(config, out=tmp_path)
    assert min(result.member_accuracy("test").values()) > 0.8
