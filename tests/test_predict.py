"""`vqflow predict` as a user runs it: maps at each input's resolution, stable names, colour
bar, threshold override, unreadable inputs named, the run folder protected."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from vqflow.cli import main
from vqflow.engine.build import load_run
from vqflow.engine.predict import collect_images, output_names
from vqflow.imageio import model_input, read_rgb


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "scores.csv", newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def inputs(tiny_data, tmp_path_factory) -> Path:
    """A square 64-px test image, a defect, and a wide and a tall resize of them."""
    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(tiny_data / "stripes" / "test" / "good" / "000.png", d / "square.png")
    shutil.copy(tiny_data / "waves" / "test" / "spot" / "001.png", d / "defect.png")
    Image.open(d / "square.png").resize((150, 70), Image.BILINEAR).save(d / "wide.png")
    Image.open(d / "defect.png").resize((48, 120), Image.BILINEAR).save(d / "tall.jpg")
    return d


@pytest.fixture(scope="module")
def predicted(tiny_run, inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred") / "out"
    args = ["predict", "--run", str(tiny_run), "--engine", "torch", str(inputs), "--out", str(out)]
    assert main([*args, "--save-maps", "--quiet"]) == 0
    return out


def test_maps_have_each_inputs_own_resolution_and_match_the_detector(tiny_run, inputs, predicted):
    rows = _rows(predicted)
    assert set(rows) == {"square.png", "defect.png", "wide.png", "tall.jpg"}
    det = load_run(tiny_run, "cpu").detector
    for name, r in rows.items():
        w, h = Image.open(inputs / name).size
        amap = np.load(r["map"])
        assert amap.shape == (h, w) and amap.dtype == np.float32
        heat = Image.open(r["heatmap"])
        assert heat.height == h and heat.width > w, "the heatmap keeps the input's size, plus a colour bar"
        x = torch.from_numpy(model_input(read_rgb(inputs / name), 64))[None]
        with torch.no_grad():
            pred = det(x)
        # scores are standardised (units of the held-out normals' spread): float32 noise of the
        # traced head against eager stays far below 1e-5 of that unit
        assert float(r["score"]) == pytest.approx(float(pred.score[0]), rel=1e-5, abs=1e-5)
        if (w, h) == (64, 64):  # no resize: the raw map is the detector's map itself
            np.testing.assert_allclose(amap, pred.anomaly_map[0].numpy(), rtol=1e-6, atol=1e-7)
        else:  # resized: its mean stays the detector map's mean (bilinear keeps the level)
            assert amap.mean() == pytest.approx(float(pred.anomaly_map[0].mean()), rel=0.05, abs=1e-3)


def test_heatmap_colour_bar_spans_the_calibrated_range(tiny_run, predicted):
    cal = load_run(tiny_run, "cpu").calibration
    r = _rows(predicted)["square.png"]
    heat = np.asarray(Image.open(r["heatmap"]).convert("RGB")).astype(int)
    strip = heat[:, 64:]
    turbo = matplotlib.colormaps["turbo"]
    top = (np.array(turbo(1.0)[:3]) * 255).round()
    bottom = (np.array(turbo(0.0)[:3]) * 255).round()
    assert r["heatmap"].endswith(".jpg") and Image.open(r["heatmap"]).format == "JPEG"
    assert (np.abs(strip[0] - top).sum(1) <= 12).any(), "the bar's top is the colour of the range's top"
    assert (np.abs(strip[-1] - bottom).sum(1) <= 12).any()
    assert not (np.abs(strip[-1] - top).sum(1) <= 12).any(), "the bar's ends differ"
    lo, hi = cal.map_range
    assert hi > lo


def test_output_names_are_stable_whatever_the_order(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub / "good").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / sub / "good" / "000.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "000.jpg")
    one = [str(tmp_path / "a"), str(tmp_path / "b" / "good" / "000.png")]
    names = {}
    for order in (one, one[::-1]):
        files = collect_images(order)
        names[tuple(order)] = dict(zip((str(f) for f, _ in files), output_names(files)))
    first, second = names.values()
    assert first == second
    assert first[str(tmp_path / "a" / "good" / "000.png")] == "good/000"
    assert len(set(first.values())) == len(first), "no two inputs share an output name"
    clash = output_names([(tmp_path / "a" / "000.jpg", tmp_path / "a"), (tmp_path / "a" / "000.png", tmp_path / "a")])
    assert clash[0] != clash[1] and all(n.startswith("000_") for n in clash)


def test_threshold_overrides_the_calibrated_one(tiny_run, inputs, tmp_path):
    for thr, verdict in (("-1e30", "anomalous"), ("1e30", "normal")):
        out = tmp_path / verdict
        assert (
            main(
                [
                    "predict",
                    "--run",
                    str(tiny_run),
                    str(inputs),
                    "--out",
                    str(out),
                    f"--threshold={thr}",
                    "--no-heatmaps",
                    "--quiet",
                ]
            )
            == 0
        )
        rows = _rows(out).values()
        assert all(r["verdict"] == verdict and float(r["threshold"]) == float(thr) for r in rows)
        assert all(r["heatmap"] == "" for r in rows) and not (out / "heatmaps").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqflow", *args], capture_output=True, text=True, timeout=300)


def test_unreadable_inputs_are_named_on_stderr_and_all_bad_exits_2(tiny_run, inputs, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(inputs / "square.png", mixed / "ok.png")
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (mixed / "empty.jpg").write_bytes(b"")
    r = _cli("predict", "--run", str(tiny_run), str(mixed), "--out", str(tmp_path / "o1"), "--quiet")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and any("broken.png" in w for w in warnings) and any("empty.jpg" in w for w in warnings)
    assert "1 image(s) scored" in r.stdout and "2 unreadable" in r.stdout
    (mixed / "ok.png").unlink()
    r = _cli("predict", "--run", str(tiny_run), str(mixed), "--out", str(tmp_path / "o2"), "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: none of the 2")
    assert "Traceback" not in r.stderr


def test_out_may_not_be_the_run_folder(tiny_run, inputs, capsys):
    before = (tiny_run / "checkpoints" / "final.pt").read_bytes()
    assert main(["predict", "--run", str(tiny_run), str(inputs), "--out", str(tiny_run), "--quiet"]) == 2
    assert "run folder" in capsys.readouterr().err
    assert not (tiny_run / "scores.csv").exists()
    assert (tiny_run / "checkpoints" / "final.pt").read_bytes() == before
    assert not (tiny_run / "heatmaps").exists()


def test_a_file_name_that_is_not_utf8_is_scored_and_written(tiny_run, inputs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(inputs / "square.png", src / name)
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), str(src), "--out", str(out), "--quiet"]) == 0
    raw = (out / "scores.csv").read_bytes()
    assert b"caf\xe9.png" in raw
    assert (out / "heatmaps" / os.fsdecode(b"caf\xe9.jpg")).is_file()


@pytest.mark.parametrize("batch", [1, 3])
def test_frozen_forward_equals_the_detectors_own(tiny_run, tiny_data, batch):
    from vqflow.model.detector import frozen_forward

    det = load_run(tiny_run, "cpu").detector
    files = sorted(tiny_data.glob("*/test/*/*.png"))[:batch]
    x = torch.from_numpy(np.stack([model_input(read_rgb(f), 64) for f in files]))
    score, amap, concept = frozen_forward(det, (64, 64))(x)
    with torch.no_grad():
        ref = det(x)
    np.testing.assert_allclose(score.numpy(), ref.score.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(amap.numpy(), ref.anomaly_map.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(concept.numpy(), ref.concept.numpy())


def test_auto_engine_exports_once_into_the_cache_and_agrees_with_torch(
    tiny_run, inputs, predicted, tmp_path, capsys, monkeypatch
):
    from vqflow.export.onnx import CACHED_EXPORTS

    cache = tmp_path / "cache"
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    stale = [cache / "onnx" / f"stale{i}" for i in range(CACHED_EXPORTS)]  # older exports, oldest first
    for i, folder in enumerate(stale):
        folder.mkdir(parents=True)
        os.utime(folder, (1e9 + i, 1e9 + i))
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["predict", "--run", str(tiny_run), str(inputs), "--out", str(out), "--save-maps"]) == 0
    err = capsys.readouterr().err
    graphs = list(cache.glob("onnx/*/model.onnx"))
    assert len(graphs) == 1 and graphs[0].with_suffix(".json").is_file()
    kept = sorted(d.name for d in (cache / "onnx").iterdir())
    assert kept == sorted([graphs[0].parent.name, *(d.name for d in stale[1:])]), "only the oldest export is pruned"
    assert err.count("exported the run once for onnxruntime") == 1, "the second predict reuses the cached graph"
    assert not (tiny_run / "export").exists(), "the run folder is not written"
    torch_rows = _rows(predicted)
    for out in outs:
        for name, r in _rows(out).items():
            t = torch_rows[name]
            assert r["verdict"] == t["verdict"] and r["concept"] == t["concept"]
            assert float(r["score"]) == pytest.approx(float(t["score"]), rel=1e-4, abs=1e-6)
            ma, mt = np.load(r["map"]), np.load(t["map"])
            assert np.abs(ma - mt).max() <= 1e-4 * max(float(np.ptp(mt)), 1e-6)


def test_auto_engine_falls_back_to_torch_when_the_export_cannot_be_written(
    tiny_run, inputs, tmp_path, capsys, monkeypatch
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VQFLOW_CACHE", str(blocker))
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), str(inputs / "square.png"), "--out", str(out)]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "predicting with torch" in warning[0]
    assert _rows(out)["square.png"]["verdict"] in ("normal", "anomalous")
    assert main(["predict", "--run", str(tiny_run), "--engine", "onnx", str(inputs), "--out", str(out)]) == 2


def test_engine_onnx_refuses_a_gpu_device(tiny_run, inputs, tmp_path, capsys):
    args = ["predict", "--run", str(tiny_run), "--engine", "onnx", "--device", "cuda", str(inputs)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert "--engine torch" in capsys.readouterr().err


def test_calibration_standardises_the_image_score_on_the_held_out_normals(tiny_run):
    """Recomputed from scratch: the k-NN bank is the training normals' unit-length mean f4
    feature; each image's k-NN part is its distance to the k-th nearest bank entry (a training
    normal's own entry left out), found by scikit-learn; the held-out normals' evidence gives the
    saved centre and scale, and the run's thresholds are the concept rule on those scores. The
    local part is relative: minus the mean local part of the image's local_neighbours nearest."""
    from sklearn.neighbors import NearestNeighbors

    from vqflow.calibration import TAIL_FIT, TAIL_IMAGES, concept_thresholds, standardisation
    from vqflow.data import ImageDataset, load_data
    from vqflow.data.sample import collate
    from vqflow.engine.fit import split_validation
    from vqflow.model.scores import absolute_nll_map, log_likelihood_maps, topk_mean

    tr = load_run(tiny_run, "cpu")
    cfg, det = tr.cfg, tr.detector
    assert det.image_score == "local_knn" and len(det.calibration.score_center) == 2
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    train, val = split_validation(splits.train, cfg.data.val_fraction, cfg.train.seed)
    assert len(val) > 0
    size = (cfg.data.image_size, cfg.data.image_size)

    def parts(recs):
        """(global features (N, C), local top-k (N,), concepts (N,)) from the backbone and head."""
        ds = ImageDataset(recs, cfg.data.image_size)
        g, local, concepts = [], [], []
        with torch.no_grad():
            for i in range(len(ds)):
                feats = det.features(collate([ds[i]]).image)
                mean = feats[3].mean(dim=(2, 3)).double().numpy()
                g.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
                out = det.head(feats)
                nll_map = absolute_nll_map(log_likelihood_maps(out.u, size), det.blur_sigma)
                local.append(topk_mean(nll_map, det.topk).numpy())
                concepts.append(out.concept.numpy())
        return np.concatenate(g), np.concatenate(local), np.concatenate(concepts)

    train_g, train_local, train_concepts = parts(train)
    val_g, val_local, val_concepts = parts(val)
    assert det.knn_bank.double().numpy() == pytest.approx(train_g, abs=1e-5)
    assert det.knn_local.double().numpy() == pytest.approx(train_local, rel=1e-4, abs=1e-5)
    k, m = cfg.score.knn_k, cfg.score.local_neighbours
    assert m > 0
    nn = NearestNeighbors(n_neighbors=k + 1).fit(train_g)
    train_dist, train_rows = nn.kneighbors(train_g)  # the first neighbour is the image itself
    val_dist, val_rows = nn.kneighbors(val_g, n_neighbors=k)
    # the local part relative to the mean local part of the m nearest training normals
    train_rel = train_local - train_local[train_rows[:, 1 : m + 1]].mean(1)
    val_rel = val_local - train_local[val_rows[:, :m]].mean(1)
    train_ev = np.stack([train_rel, train_dist[:, k]], 1)
    val_ev = np.stack([val_rel, val_dist[:, k - 1]], 1)
    with torch.no_grad():
        pred = det(collate([ImageDataset(val, cfg.data.image_size)[0]]).image)
        own = det.features(collate([ImageDataset(train, cfg.data.image_size)[0]]).image)
        left_out = det.predict_features(own, size, knn_skip=1)
    assert pred.evidence.double().numpy()[0] == pytest.approx(val_ev[0], rel=1e-4, abs=1e-5)
    assert left_out.evidence.double().numpy()[0] == pytest.approx(train_ev[0], rel=1e-4, abs=1e-5)

    center, scale = standardisation(val_ev)
    assert det.calibration.score_center == pytest.approx(center, rel=1e-4, abs=1e-5)
    assert det.calibration.score_scale == pytest.approx(scale, rel=1e-4, abs=1e-5)
    cal = det.calibration
    glob, per = concept_thresholds(
        cal.combine(train_ev), train_concepts, cal.combine(val_ev), val_concepts, cal.quantile, cfg.score.concept_prior
    )
    assert cal.threshold == pytest.approx(glob, rel=1e-4, abs=1e-5)
    assert cal.tail_images == TAIL_IMAGES > 0
    assert cal.tail_fit == TAIL_FIT > 0
    assert set(cal.concept_thresholds) == set(per)
    for key, v in per.items():
        assert cal.concept_thresholds[key] == pytest.approx(v, rel=1e-4, abs=1e-5)


def test_calibration_leaves_each_training_normal_out_of_its_own_neighbours(tiny_data, tmp_path, monkeypatch):
    """Fit scores the training normals with their own bank entry skipped and the held-out ones
    against the whole bank, as a new image would be."""
    from tiny_run import tiny_args
    from vqflow.cli import main
    from vqflow.engine import calibrate

    calls = []
    original = calibrate._predict

    def spy(det, src, size, batch_size, device, knn_skip=0):
        calls.append((len(src), knn_skip, det.knn_bank.shape[0]))
        return original(det, src, size, batch_size, device, knn_skip)

    monkeypatch.setattr(calibrate, "_predict", spy)
    assert main(["fit", "--data", f"mvtec:{tiny_data}", "--out", str(tmp_path / "run"), *tiny_args(1)]) == 0
    (n_train, train_skip, bank), (n_val, val_skip, _) = calls
    assert (train_skip, val_skip) == (1, 0) and bank == n_train and n_val > 0


def test_a_run_calibrated_before_the_combined_score_keeps_the_map_score(tiny_run, tmp_path):
    """A checkpoint whose calibration has no score statistics (vqflow before score.image_score)
    is scored as it was calibrated: the top-k of the image map."""
    from vqflow.engine.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock"))
    path = run / "checkpoints" / "final.pt"
    payload = load_checkpoint(path)
    for key in ("score_center", "score_scale"):
        payload["calibration"].pop(key)
    del payload["config"]["score"]["image_score"]
    save_checkpoint(path, payload)
    det = load_run(run, "cpu").detector
    assert det.image_score == "map"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = det(x)
        feats = det.features(x)
        loglik = det.log_likelihood(feats, (64, 64))[0]
    from vqflow.model.scores import score_batch

    ref = score_batch(loglik, det.image_map, det.pixel_map, det.topk, det.blur_sigma)
    assert torch.allclose(pred.score, ref.score)


def test_a_run_without_the_training_normals_local_parts_scores_the_absolute_local_part(tiny_run):
    """Runs calibrated before score.local_neighbours carry no knn_local: their local part stays absolute."""
    from vqflow.data import ImageDataset, load_data
    from vqflow.data.sample import collate
    from vqflow.model.scores import absolute_nll_map, log_likelihood_maps, topk_mean

    tr = load_run(tiny_run, "cpu")
    det, size = tr.detector, (tr.cfg.data.image_size, tr.cfg.data.image_size)
    ds = ImageDataset(
        load_data(tr.cfg.data.specs, tr.cfg.data.classes, tr.cfg.data.normal).test, tr.cfg.data.image_size
    )
    with torch.no_grad():
        feats = det.features(collate([ds[0], ds[1]]).image)
        absolute = topk_mean(absolute_nll_map(log_likelihood_maps(det.head(feats).u, size), det.blur_sigma), det.topk)
        relative = det.predict_features(feats, size).evidence[:, 0]
        det.knn_local = torch.zeros(0)
        older = det.predict_features(feats, size).evidence[:, 0]
    assert older.numpy() == pytest.approx(absolute.numpy(), rel=1e-5, abs=1e-6)
    assert not np.allclose(relative.numpy(), absolute.numpy())
