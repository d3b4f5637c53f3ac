"""`vqflow export`: one ONNX graph + sidecar, parity with the torch Detector on real images,
a torch-free inferencer, and `vqflow predict --onnx` writing what the torch path writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vqflow.calibration import Calibration, ScoreStats
from vqflow.cli import main
from vqflow.engine.build import load_run
from vqflow.engine.checkpoint import load_checkpoint
from vqflow.errors import VQFlowError
from vqflow.imageio import model_input, read_rgb

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--run", str(tiny_run), "--out", str(out), "--quiet"]) == 0
    return out


def _test_images(tiny_data: Path) -> list[Path]:
    return sorted(tiny_data.glob("*/test/*/*.png"))


def test_sidecar_carries_what_a_runtime_needs(tiny_run, exported):
    side = json.loads(exported.with_suffix(".json").read_text())
    payload = load_checkpoint(tiny_run / "checkpoints" / "final.pt")
    cal = Calibration.from_dict(payload["calibration"])
    assert side["format"] == "vqflow-onnx-v1" and side["vqflow_version"] == payload["version"]
    assert side["input"]["size_hw"] == [64, 64] and side["input"]["mean"] == [0.485, 0.456, 0.406]
    assert Calibration.from_dict(side["calibration"]) == cal
    assert side["calibration"]["threshold"] == cal.threshold and len(side["calibration"]["map_range"]) == 2
    classes = side["calibration"]["concept_classes"]
    assert set(classes.values()) <= {"stripes", "waves"} and classes


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch_on_real_images(tiny_run, tiny_data, exported, batch):
    """Scores and maps within 1e-4 of their range, same concepts, at two batch sizes
    (the batch axis is dynamic)."""
    files = _test_images(tiny_data)[:batch]
    x = np.stack([model_input(read_rgb(f), 64) for f in files])
    det = load_run(tiny_run, "cpu").detector
    with torch.no_grad():
        pred = det(torch.from_numpy(x))
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    score, amap, concept = sess.run(None, {"images": x})
    assert score.shape == (batch,) and amap.shape == (batch, 64, 64)
    ref_map = pred.anomaly_map.numpy()
    assert np.abs(amap - ref_map).max() <= 1e-4 * max(float(np.ptp(ref_map)), 1e-6)
    ref_score = pred.score.numpy()
    assert np.abs(score - ref_score).max() <= 1e-4 * max(float(np.ptp(ref_score)), float(np.abs(ref_score).max()), 1e-6)
    np.testing.assert_array_equal(concept, pred.concept.numpy())


# Runs in a fresh interpreter where torch (and the rest of vqflow's training stack) cannot be
# imported: only numpy, Pillow and onnxruntime (with its own dependencies) are available.
TORCH_FREE = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = {"torch", "yaml", "scipy", "sklearn", "matplotlib", "tqdm", "skimage"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, Block())
    from vqflow.export.inferencer import OnnxInferencer
    inf = OnnxInferencer(sys.argv[1])
    out = []
    for r in inf.predict(sys.argv[2:], batch_size=3):
        out.append({"path": r.path, "score": r.score, "verdict": r.verdict, "concept": r.concept,
                    "threshold": r.threshold, "error": r.error,
                    "shape": None if r.anomaly_map is None else list(r.anomaly_map.shape),
                    "map_sum": None if r.anomaly_map is None else float(r.anomaly_map.astype("float64").sum())})
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
    print(json.dumps(out))
""")


def test_torch_free_inferencer_agrees_with_vqflow_predict(tiny_run, tiny_data, exported, tmp_path):
    files = _test_images(tiny_data)[:4]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(exported), *map(str, files), str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    onnx_rows = {Path(d["path"]).name + Path(d["path"]).parent.name: d for d in json.loads(r.stdout)}
    out = tmp_path / "torch"
    args = ["predict", "--run", str(tiny_run), "--engine", "torch", *map(str, files), "--out", str(out)]
    assert main([*args, "--save-maps", "--quiet"]) == 0
    with open(out / "scores.csv", newline="") as f:
        torch_rows = list(csv.DictReader(f))
    assert len(torch_rows) == 4
    for row in torch_rows:
        d = onnx_rows[Path(row["path"]).name + Path(row["path"]).parent.name]
        assert d["score"] == pytest.approx(float(row["score"]), rel=1e-4, abs=1e-6)
        assert d["verdict"] == row["verdict"] and d["concept"] == int(row["concept"])
        amap = np.load(row["map"])
        assert d["shape"] == list(amap.shape)
        assert d["map_sum"] == pytest.approx(float(amap.astype(np.float64).sum()), rel=1e-4)
    assert "bad.png" in onnx_rows["bad.png" + tmp_path.name]["error"]


def test_predict_onnx_writes_the_same_outputs_as_torch(tiny_run, tiny_data, exported, tmp_path):
    inputs = str(tiny_data / "waves" / "test")
    outs = {}
    for name, model in (("torch", ["--run", str(tiny_run), "--engine", "torch"]), ("onnx", ["--onnx", str(exported)])):
        outs[name] = tmp_path / name
        assert main(["predict", *model, inputs, "--out", str(outs[name]), "--save-maps", "--quiet"]) == 0
    rows = {}
    for name, out in outs.items():
        with open(out / "scores.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert [list(r) for r in rows["torch"]] == [list(r) for r in rows["onnx"]], "same columns"
    for a, b in zip(rows["torch"], rows["onnx"]):
        assert a["path"] == b["path"] and a["verdict"] == b["verdict"] and a["concept"] == b["concept"]
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4, abs=1e-6)
        assert Path(a["heatmap"]).relative_to(outs["torch"]) == Path(b["heatmap"]).relative_to(outs["onnx"])
        ma, mb = np.load(a["map"]), np.load(b["map"])
        assert np.abs(ma - mb).max() <= 1e-4 * max(float(np.ptp(ma)), 1e-6)


def test_export_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert main(["export", "--run", str(tiny_run), "--out", str(tmp_path / "model.bin")]) == 2
    assert ".onnx" in capsys.readouterr().err
    from vqflow.export.inferencer import OnnxInferencer

    with pytest.raises(VQFlowError, match="does not exist"):
        OnnxInferencer(tmp_path / "missing.onnx")
    (tmp_path / "lonely.onnx").write_bytes(b"x")
    with pytest.raises(VQFlowError, match="sidecar"):
        OnnxInferencer(tmp_path / "lonely.onnx")


def test_calibration_round_trip_and_the_0_1_0_layout():
    cal = Calibration(
        threshold=0.5,
        concept_thresholds={3: 0.7},
        quantile=0.95,
        source="validation",
        n_images=12,
        map_range=(0.1, 0.9),
        stats=ScoreStats(1.0, 2.0, [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]),
        concept_classes={3: "brick"},
        tail_images=20,
        tail_fit=5,
    )
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    before_floor = {k: v for k, v in cal.to_dict().items() if k not in ("tail_images", "tail_fit")}
    assert Calibration.from_dict(before_floor).tail_images == Calibration.from_dict(before_floor).tail_fit == 0
    old = {
        "stats": None,
        "map_range": [0.0, 2.0],
        "thresholds": {"global": 0.4, "per_concept": {"2": 0.6}, "quantile": 0.99, "source": "training", "n": 9},
    }
    got = Calibration.from_dict(old)
    assert got.threshold_for(2) == 0.6 and got.threshold_for(5) == 0.4 and got.source == "training"
    assert got.map_range == (0.0, 2.0) and got.n_images == 9
    with pytest.raises(VQFlowError, match="damaged"):
        Calibration.from_dict({"threshold": "high"})
