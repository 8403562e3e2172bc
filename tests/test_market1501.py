"""The market1501 source on generated JPEGs in the official layout, and re-id evaluation end to end."""

import json
from pathlib import Path

import pytest
import yaml

import peerlearn
from conftest import REPO
from market_layout import HEIGHT, TEST_IDS, TRAIN_IDS, WIDTH, make_market_layout
from peerlearn.config import DataConfig, load_config
from peerlearn.data import load_data
from peerlearn.data.market1501 import load_market1501, parse_name
from peerlearn.api import prepare_run
from peerlearn.cli import main
from peerlearn.errors import DataError
from peerlearn.evaluate.runner import retrieval_section
from peerlearn.run_reader import LoadedRun


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return make_market_layout(tmp_path_factory.mktemp("market") / "Market-1501")


def test_names_give_identity_and_camera():
    assert parse_name("0001_c1s1_001051_00.jpg") == (1, 1)
    assert parse_name("-1_c3s2_000401_03.jpg") == (-1, 3)
    assert parse_name("0000_c6s4_002202_01.jpg") == (0, 6)
    with pytest.raises(DataError, match="does not have the form"):
        parse_name("person_1.jpg")


def test_loader_reads_the_three_folders(market):
    raw = load_market1501(DataConfig(source="market1501", path=str(market), options={"height": HEIGHT, "width": WIDTH}))
    assert raw.class_names == [f"{i:04d}" for i in TRAIN_IDS]  # identity classification, numbered in order
    assert raw.train_x.shape == (len(TRAIN_IDS) * 3 * 8, 3, HEIGHT, WIDTH)
    assert sorted(raw.train_y.unique().tolist()) == list(range(len(TRAIN_IDS)))
    assert len(raw.test_y) == 0  # no classification test set: the test identities are new
    query, gallery = raw.extras["retrieval"]["query"], raw.extras["retrieval"]["gallery"]
    assert len(query) == len(TEST_IDS) * 2 and set(query.cameras.tolist()) == {1, 2}
    assert set(gallery.identities.tolist()) == {-1, 0, *TEST_IDS}
    assert len(gallery) == len(TEST_IDS) * 6 + 8 and gallery.x.shape[1:] == (3, HEIGHT, WIDTH)
    first = Path(gallery.files[0]).name
    assert (gallery.identities[0].item(), gallery.cameras[0].item()) == parse_name(first)


def test_load_data_keeps_query_and_gallery_and_resizes_them(market):
    data = load_data(DataConfig(source="market1501", path=str(market), image_size=12, val_fraction=0.25), seed=0)
    assert data.num_classes == len(TRAIN_IDS) and len(data.test) == 0
    assert data.retrieval["query"].x.shape[1:] == (3, 12, 12) and data.train.x.shape[1:] == (3, 12, 12)
    assert len(data.val) == 36 and len(data.train) == 108


def test_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(DataError, match="lacks query, bounding_box_test"):
        load_market1501(DataConfig(source="market1501", path=str(tmp_path)))


def test_market_config_trains_and_evaluates_retrieval(market, tmp_path, capsys):
    """The shipped re-id config (shrunk) on the generated layout: after training, the members' features retrieve
    the unseen test people far better than the untrained features (which match cameras, not people)."""
    tree = yaml.safe_load((REPO / "configs" / "market1501_dml.yaml").read_text())
    config = load_config(tree, [f"data.path={market}", f"data.options={{height: {HEIGHT}, width: {WIDTH}}}",
                                "data.val_fraction=0.25", "members.0.model=small_cnn", "members.1.model=small_cnn",
                                "members.0.model_args={width: 8}", "members.1.model_args={width: 8}",
                                "optim.lr=0.003", "train.epochs=3", "train.threads=1", 'train.progress="off"',
                                "tracking.tensorboard=false"])
    assert config.optim.name == "adam" and config.optim.betas == (0.5, 0.999) and config.data.batch_size == 16
    _, _, recipe = prepare_run(config)
    untrained = LoadedRun(tmp_path, {"ensemble": ["a", "b"]}, config, recipe.data, recipe.cohort, recipe.normalizer,
                          recipe.device, tmp_path)
    before = retrieval_section(untrained, ["a", "b"])["scores"]
    run_dir = peerlearn.train(config, out=tmp_path / "runs").run_dir
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classification"] is None  # empty test split
    scores = result["retrieval"]["scores"]
    assert set(scores) == {"a", "b", "cohort"} and scores["cohort"]["members"] == ["a", "b"]
    for name, entry in scores.items():
        assert entry["queries"] == len(TEST_IDS) * 2 and entry["skipped"] == 0
        assert entry["cmc"]["rank1"] <= entry["cmc"]["rank5"] <= entry["cmc"]["rank10"]
        assert entry["cmc"]["rank1"] >= 0.75, (name, entry)
        assert entry["map"] > before[name]["map"] + 0.2, (name, entry, before[name])
    assert main(["evaluate", str(run_dir), "--split", "val"]) == 0
    table = capsys.readouterr().out
    assert "rank-1 %" in table and "cohort" in table and "macro F1" in table and "ensemble" in table
