"""Prediction from a run read back: every kind of input through the run's own preprocessing, the CLI's
`predict`, `evaluate --data`, and runs on data given from Python that load without it in a new process."""

import csv
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import peerlearn
from conftest import run_cli, tiny_config
from peerlearn.cli import main
from peerlearn.config import load_config
from peerlearn.data import load_raw
from peerlearn.errors import DataError


def digits():
    return load_raw(load_config(tiny_config()).data)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return peerlearn.train(tiny_config(recipe="mutual", train={"epochs": 2}), out=tmp_path_factory.mktemp("runs"))


def write_pngs(folder, images, labels=None):
    """uint8 [N, 1, H, W] as grayscale PNGs (in class subfolders when labels are given)."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        target = folder / str(int(labels[i])) if labels is not None else folder
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"item{i:03d}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(path)
    return paths


@torch.no_grad()
def reference(result, x, names):
    """Mean softmax of the trained members on stored inputs x, normalised as training normalised them."""
    normalization = json.loads((result.run_dir / "run.json").read_text())["data"]["normalization"]
    shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
    mean, std = (torch.tensor(normalization[key]).reshape(shape) for key in ("mean", "std"))
    inputs = ((x.float() / 255.0 if x.dtype == torch.uint8 else x) - mean) / std
    return torch.stack([F.softmax(result.cohort[n].model.eval()(inputs), 1) for n in names]).mean(0)


def test_predict_gives_the_ensemble_and_each_member_on_every_kind_of_input(digits_run, tmp_path):
    raw = digits()
    x, y = raw.test_x[:40], raw.test_y[:40]
    run = peerlearn.load_run(digits_run.run_dir)
    expected = reference(digits_run, x, ["a", "b"])
    probabilities = run.predict(x)
    assert probabilities.shape == (40, 10) and torch.allclose(probabilities.sum(1), torch.ones(40))
    assert torch.allclose(probabilities, expected, atol=1e-6)
    assert torch.allclose(run.predict(x, member="b"), reference(digits_run, x, ["b"]), atol=1e-6)
    assert torch.allclose(run.predict(x.numpy()), expected, atol=1e-6)  # numpy
    assert torch.allclose(run.predict(x[0]), expected[:1], atol=1e-6)  # one input
    assert torch.allclose(run.predict(x.float() / 255.0), expected, atol=1e-5)  # floats in 0..1 units
    from PIL import Image

    images = [Image.fromarray(item[0].numpy()) for item in x[:5]]
    assert torch.allclose(run.predict(images), expected[:5], atol=1e-6)  # PIL images
    paths = write_pngs(tmp_path / "files", x[:5])
    assert torch.allclose(run.predict([str(p) for p in paths]), expected[:5], atol=1e-6)  # image files
    dataset = torch.utils.data.TensorDataset(x, y)
    assert torch.allclose(run.predict(dataset, batch_size=7), expected, atol=1e-6)  # a Dataset, in batches
    with pytest.raises(Exception, match="no member 'c'"):
        run.predict(x, member="c")


def test_wrong_inputs_are_data_errors_naming_the_input(digits_run, tmp_path):
    run = peerlearn.load_run(digits_run.run_dir)
    with pytest.raises(DataError, match="input 0 is 10x10 pixels; this run takes 8x8"):
        run.predict(torch.zeros(2, 1, 10, 10, dtype=torch.uint8))
    with pytest.raises(DataError, match="input 1 has 3 channel"):
        run.predict([torch.zeros(1, 8, 8), torch.zeros(3, 8, 8)])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        run.predict(str(bad))


def test_cli_predicts_a_folder_recursively_into_a_csv(digits_run, tmp_path, capsys):
    raw = digits()
    x = raw.test_x[:12]
    paths = write_pngs(tmp_path / "images" / "deeper", x)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(digits_run.run_dir), str(tmp_path / "images"), "--out", str(out),
                 "--probabilities", "--progress", "off"]) == 0
    assert "12 inputs predicted by ensemble of a, b" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    expected = reference(digits_run, x, ["a", "b"])
    assert [r["input"] for r in rows] == [str(p) for p in paths]
    for row, p in zip(rows, expected):
        assert row["predicted"] == str(int(p.argmax())) and float(row["probability"]) == pytest.approx(float(p.max()),
                                                                                                       rel=1e-5)
        assert [float(row[f"p_{c}"]) for c in range(10)] == pytest.approx(p.tolist(), rel=1e-5, abs=1e-7)
    # one member, printed to stdout
    assert main(["predict", str(digits_run.run_dir), str(paths[0]), "--member", "a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input,predicted,probability" and lines[1].startswith(str(paths[0]))


def test_cli_predict_exits_2_naming_a_bad_image(digits_run, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "odd.png")
    assert main(["predict", str(digits_run.run_dir), str(tmp_path / "odd.png")]) == 2
    error = capsys.readouterr().err
    assert "odd.png is 9x9 pixels; this run takes 8x8" in error and "Traceback" not in error
    assert main(["predict", str(digits_run.run_dir), str(tmp_path / "missing")]) == 2


def test_evaluate_scores_a_run_on_a_labelled_folder(digits_run, tmp_path, capsys):
    raw = digits()
    x, y = raw.test_x[:60], raw.test_y[:60]
    write_pngs(tmp_path / "labelled", x, y)
    assert main(["evaluate", str(digits_run.run_dir), "--data", str(tmp_path / "labelled"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "data" and result["items"] == 60
    # the files are read class folder by class folder: compare as multisets of (label, prediction)
    expected = reference(digits_run, x, ["a"]).argmax(1)
    assert result["classification"]["a"]["top1"] == pytest.approx(float((expected == y).float().mean()))
    assert (digits_run.run_dir / "evaluation_data.json").is_file()
    (tmp_path / "labelled" / "cats").mkdir()
    assert main(["evaluate", str(digits_run.run_dir), "--data", str(tmp_path / "labelled")]) == 2
    assert "not the run's classes: cats" in capsys.readouterr().err


# --------------------------------------------------------------------------- data given from Python
NETS = '''
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes=10, hidden=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def small_net(num_classes, hidden=12):
    return SmallNet(num_classes, hidden)
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "predict_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    sys.modules.pop("predict_nets", None)
    import predict_nets

    return predict_nets


class FloatDigits(Dataset):
    """Float images in 0..1 (as torchvision's ToTensor gives), labels as `targets`."""

    def __init__(self, x, y):
        self.x, self.targets = x.float() / 255.0, y

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def test_a_run_on_python_tensors_and_modules_loads_and_predicts_in_a_new_process(user_nets, tmp_path):
    raw = digits()
    data = peerlearn.UserData(train=(raw.train_x, raw.train_y), test=(raw.test_x, raw.test_y),
                              class_names=[f"digit{i}" for i in range(10)])
    config = tiny_config(recipe="mutual", train={"epochs": 2})
    config.pop("members")
    config["members"] = [{"name": "a"}, {"name": "b"}]
    result = peerlearn.train(config, out=tmp_path / "runs", data=data,
                             members={"a": user_nets.SmallNet(), "b": user_nets.small_net})
    paths = write_pngs(tmp_path / "images", raw.test_x[:8])
    process = run_cli("predict", str(result.run_dir), str(tmp_path / "images"), "--probabilities")
    assert process.returncode == 0, process.stderr
    rows = list(csv.DictReader(process.stdout.splitlines()))
    expected = reference(result, raw.test_x[:8], ["a", "b"])
    assert [r["input"] for r in rows] == [str(p) for p in paths]
    assert [r["predicted"] for r in rows] == [f"digit{int(i)}" for i in expected.argmax(1)]
    assert [float(r["p_digit3"]) for r in rows] == pytest.approx(expected[:, 3].tolist(), rel=1e-5, abs=1e-7)
    # scored on labelled data in a new process; the training splits themselves are not stored with the run
    process = run_cli("evaluate", str(result.run_dir), "--json")
    assert process.returncode == 2 and "given from Python" in process.stderr and "--data" in process.stderr
    score = peerlearn.evaluate_run(result.run_dir, data=(raw.test_x, raw.test_y), save=False)
    assert score["classification"]["ensemble"]["top1"] == pytest.approx(result.summary["ensemble"]["test"]["top1"])
    # export checks the model on seeded random inputs
    process = run_cli("export", str(result.run_dir), "--member", "a", "--format", "torchscript", "--out",
                      str(tmp_path / "export"), "--progress", "off")
    assert process.returncode == 0 and "random items" in process.stdout, process.stderr


def test_float_images_from_a_dataset_take_pixels_only_when_they_were_in_unit_range(user_nets, tmp_path):
    raw = digits()
    config = tiny_config(train={"epochs": 1}, data={"stream": True, "stream_workers": 0})
    config["members"] = [{"name": "a"}]
    unit = peerlearn.train(config, out=tmp_path / "unit", members={"a": user_nets.small_net},
                           data=peerlearn.UserData(train=FloatDigits(raw.train_x, raw.train_y),
                                                   test=FloatDigits(raw.test_x, raw.test_y),
                                                   class_names=raw.class_names))
    run = peerlearn.load_run(unit.run_dir)
    assert run.pipeline.dtype == "float32" and run.pipeline.value_range == (0.0, 1.0)
    x = raw.test_x[:10]
    from PIL import Image

    expected = reference(unit, x.float() / 255.0, ["a"])
    assert torch.allclose(run.predict([Image.fromarray(i[0].numpy()) for i in x]), expected, atol=1e-6)
    assert torch.allclose(run.predict(FloatDigits(x, raw.test_y[:10])), expected, atol=1e-6)
    shifted = peerlearn.train(config, out=tmp_path / "shifted", members={"a": user_nets.small_net},
                              data=peerlearn.UserData(train=(raw.train_x.float() / 64 - 1, raw.train_y),
                                                      class_names=raw.class_names))
    with pytest.raises(DataError, match=r"float images with values in -1\.\.2\.98"):
        peerlearn.load_run(shifted.run_dir).predict(Image.fromarray(x[0, 0].numpy()))


def test_a_module_that_cannot_be_rebuilt_is_given_again_to_load_run(user_nets, tmp_path):
    class LocalNet(user_nets.SmallNet):  # defined here: the run records it as a python-object
        pass

    config = tiny_config(train={"epochs": 1})
    config["members"] = [{"name": "a"}]
    result = peerlearn.train(config, out=tmp_path, members={"a": LocalNet()})
    run = peerlearn.load_run(result.run_dir, members={"a": LocalNet()})
    x = digits().test_x[:16]
    assert torch.allclose(run.predict(x), reference(result, x, ["a"]), atol=1e-6)


# --------------------------------------------------------------------------- preprocessing of each source
def test_an_image_folder_run_decodes_and_resizes_files_as_training_did(tmp_path):
    from test_streaming import write_folder

    folder = write_folder(tmp_path / "images", size=10)
    config = tiny_config(data={"source": "image_folder", "path": str(folder), "image_size": 6, "batch_size": 8},
                         train={"epochs": 1})
    result = peerlearn.train(config, out=tmp_path / "runs")
    run = peerlearn.load_run(result.run_dir)
    assert run.pipeline.resize == "pillow" and run.pipeline.mode == "RGB"
    files = sorted((folder / "class1").glob("*.png"))[:6]
    from peerlearn.data.image_folder import read_image

    stored = torch.stack([torch.from_numpy(read_image(f, "RGB", 6).copy()) for f in files])
    assert torch.allclose(run.predict([str(f) for f in files]), reference(result, stored, ["a", "b"]), atol=1e-6)


def test_a_resized_source_resizes_new_inputs_as_training_did(tmp_path):
    from peerlearn.data.prepare import resize_images

    result = peerlearn.train(tiny_config(data={"image_size": 12}, train={"epochs": 1}), out=tmp_path)
    run = peerlearn.load_run(result.run_dir)
    x = digits().test_x[:10]
    assert run.pipeline.resize == "interpolate"
    assert torch.allclose(run.predict(x), reference(result, resize_images(x, 12), ["a", "b"]), atol=1e-6)


def test_tabular_runs_predict_and_evaluate_csv_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = ["id,x1,x2,label"]
    for i in range(150):
        label = i % 3
        x = rng.normal(size=2) + 2 * label
        lines.append(f"{i},{x[0]:.4f},{x[1]:.4f},{'abc'[label]}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    config = tiny_config(data={"source": "tabular", "path": str(tmp_path / "rows.csv"),
                               "options": {"label": "label", "features": ["x1", "x2"]}},
                         members=[{"name": "a", "model": "mlp", "model_args": {"widths": [8]}}], train={"epochs": 3})
    result = peerlearn.train(config, out=tmp_path / "runs")
    new = tmp_path / "new.csv"
    new.write_text("x2,x1,label\n4.1,3.9,c\n0.2,-0.1,a\n")  # columns in another order: matched by name
    out = tmp_path / "p.csv"
    assert main(["predict", str(result.run_dir), str(new), "--out", str(out)]) == 0
    assert "2 inputs predicted by a" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    run = peerlearn.load_run(result.run_dir)
    expected = run.predict(torch.tensor([[3.9, 4.1], [-0.1, 0.2]]))
    assert [r["input"] for r in rows] == ["row 1", "row 2"]
    assert [r["predicted"] for r in rows] == [run.class_names[int(i)] for i in expected.argmax(1)]
    assert main(["evaluate", str(result.run_dir), "--data", str(new), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 2
    (tmp_path / "short.csv").write_text("x1,other\n1,2\n")
    assert main(["predict", str(result.run_dir), str(tmp_path / "short.csv")]) == 2
    assert "no column(s) x2" in capsys.readouterr().err
