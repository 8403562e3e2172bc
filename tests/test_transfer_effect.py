"""End to end on real data: with 5 labels per class, fine-tuning a quickly trained MNIST CNN beats the
same CNN trained from scratch on the digits with the same budget, and a head on its cached features
gets most of the way."""

import peerlearn

from conftest import tiny_config

NET = [{"name": "a", "model": "small_cnn", "model_args": {"width": 16}}]
TARGET = {"source": "digits", "image_size": 28, "train_subset": 50, "val_fraction": 0.0, "batch_size": 16}


def test_finetuning_beats_scratch_with_five_labels_per_class(data_root, tmp_path):
    source = peerlearn.train(tiny_config(
        members=NET, schedule={"name": "cosine"},
        data={"source": "mnist", "root": str(data_root), "train_subset": 3000, "val_fraction": 0.1, "batch_size": 32},
        train={"epochs": 3, "progress": "off", "threads": 1, "eval_test": False}), out=tmp_path)
    assert source.member_accuracy("val")["a"] > 0.8
    scratch = peerlearn.train(tiny_config(members=NET, data=TARGET, schedule={"name": "cosine"},
                                          train={"epochs": 60, "progress": "off", "threads": 1, "eval_every": 60}),
                              out=tmp_path)

    def transfer(mode):
        return peerlearn.train(tiny_config(
            recipe="transfer", members=NET, data=TARGET, schedule={"name": "cosine"},
            train={"epochs": 60, "progress": "off", "threads": 1, "eval_every": 60},
            transfer={"backbones": [{"source": str(source.run_dir), "input_size": 20, "input_pad": 4}],
                      "mode": mode, "cache_dir": str(tmp_path / "cache")}), out=tmp_path)

    finetune, features = transfer("finetune"), transfer("features")
    assert finetune.summary["sizes"]["labelled_train"] == 50
    accuracy = {name: run.member_accuracy()["a"] for name, run in
                (("scratch", scratch), ("finetune", finetune), ("features", features))}
    print(accuracy)
    assert accuracy["finetune"] > accuracy["scratch"] + 0.04
    assert accuracy["features"] > accuracy["scratch"] - 0.1
