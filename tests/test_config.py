"""Config: presets, YAML, overrides, errors naming the key."""

import pytest
import yaml

from vqflow import config
from vqflow.errors import VQFlowError


def test_presets_differ_where_they_should():
    fast, ref = config.preset("fast"), config.preset("reference")
    assert fast.model.backbone == "efficientnet_lite0" and fast.data.image_size == 256
    assert ref.model.backbone == "convnextv2_base" and ref.data.image_size == 384
    assert ref.model.flow_blocks == [2, 5, 8] and ref.model.global_dim == 512 and ref.model.pos_dim == 64
    assert ref.score.blur_sigma == 0


def test_unknown_key_suggests_nearest():
    with pytest.raises(VQFlowError, match=r"unknown config key 'train.epoch'.*'train.epochs'"):
        config.resolve(overrides=["train.epoch=3"])


def test_type_errors_name_the_key():
    with pytest.raises(VQFlowError, match="train.epochs"):
        config.resolve(overrides=["train.epochs=many"])
    with pytest.raises(VQFlowError, match="score.normalization"):
        config.resolve(overrides=["score.normalization=global"])


def test_yaml_then_options_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"preset": "fast", "train": {"epochs": 7, "lr": 0.001}, "data": {"specs": ["demo"]}}))
    cfg = config.resolve(None, str(f), ["train.lr=2e-4", "model.flow_blocks=1,1,1"], **{"train.epochs": 3})
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(2e-4)
    assert cfg.model.flow_blocks == [1, 1, 1]


def test_yaml_unknown_key_names_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  backbon: x\n")
    with pytest.raises(VQFlowError, match=r"model.backbon.*c.yaml.*model.backbone"):
        config.resolve(None, str(f))


def test_round_trip(tmp_path):
    cfg = config.resolve("fast", None, ["data.classes=a,b", "model.subnet_hidden=none"])
    config.save_yaml(cfg, tmp_path / "config.yaml")
    again = config.from_dict(config.load_yaml(tmp_path / "config.yaml"))
    assert again == cfg and again.data.classes == ["a", "b"] and again.model.subnet_hidden is None


def test_out_of_range_values_are_refused():
    with pytest.raises(VQFlowError, match=r"score.topk.*between"):
        config.resolve(overrides=["score.topk=1.5"])
    with pytest.raises(VQFlowError, match=r"train.batch_size"):
        config.resolve(overrides=["train.batch_size=1"])
