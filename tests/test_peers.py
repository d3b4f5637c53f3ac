"""benchmarks/peers.py: the fast coreset against brute force, the Fashion-MNIST subset, the
metrics and table helpers; the anomalib peers themselves only where anomalib is installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402


def brute_kcenter(x: np.ndarray, k: int, start: int) -> list[int]:
    """Greedy k-center from the full matrix of pairwise distances (float64)."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen, nearest = [start], d[start].copy()
    while len(chosen) < k:
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, d[chosen[-1]])
    return chosen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_greedy_equals_brute_force(seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 7)) * rng.uniform(0.5, 3.0, size=7) + 5.0  # off-centre: |x|^2 terms matter
    start = int(rng.integers(80))
    got = peers.kcenter_greedy(torch.from_numpy(x).to(dtype), 25, start)
    assert got == brute_kcenter(x, 25, start)
    assert len(set(got)) == 25


def test_coreset_on_unprojected_features_is_brute_force_from_its_seeded_start():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(200, 6)))
    got = peers.coreset_indices(x, 0.1, dims=16, seed=7)  # 6 <= 16 dims: no projection
    start = int(torch.randint(200, (1,), generator=torch.Generator().manual_seed(7)))
    assert got == brute_kcenter(x.numpy(), 20, start)


def test_coreset_with_projection_is_seeded_distinct_and_sized_like_anomalib():
    x = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    a = peers.coreset_indices(x, 0.05, dims=8, seed=1)
    assert len(a) == len(set(a)) == int(500 * 0.05)
    assert a == peers.coreset_indices(x, 0.05, dims=8, seed=1)
    assert a != peers.coreset_indices(x, 0.05, dims=8, seed=2)
    with pytest.raises(SystemExit, match="selects none"):
        peers.coreset_indices(x[:50], 0.01, dims=8, seed=0)


def test_random_projection_roughly_keeps_distances():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 400, generator=gen, dtype=torch.float64)
    y = peers.random_projection(x, 128, gen)
    ratio = torch.pdist(y) / torch.pdist(x)
    assert y.shape == (100, 128)
    assert 0.75 < float(ratio.min()) and float(ratio.max()) < 1.25


def _fake_fmnist(root: Path, per_class_train: int = 12, per_class_test: int = 6) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels  # each image says its class
        peers.write_idx(root / f"{split}-images-idx3-ubyte", images)
        peers.write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


def test_write_idx_is_read_back_by_vqflows_loader(tmp_path):
    from vqflow.data.fmnist import read_idx

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    peers.write_idx(tmp_path / "a", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a", 3), arr)


def test_fmnist_subset_keeps_n_per_garment_and_loads_every_split_through_vqflow(tmp_path, monkeypatch):
    from vqflow.data import fmnist, load_data

    monkeypatch.setattr(fmnist, "DEFAULT_ROOT", str(_fake_fmnist(tmp_path / "src")))
    folder = peers.fmnist_subset(tmp_path / "data", train_per_class=5, test_per_class=None)
    assert peers.fmnist_subset(tmp_path / "data", 5, None) == folder  # built once
    for normal in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]):
        splits = load_data([f"fmnist:{folder}"], None, normal)
        train_classes = np.array([r.array[0, 0] for r in splits.train])
        assert np.bincount(train_classes, minlength=10)[normal].tolist() == [5] * 5
        assert set(train_classes.tolist()) == set(normal)
        assert len(splits.test) == 60 and sum(r.label for r in splits.test) == 30
        assert {int(r.array[0, 0]) for r in splits.test if r.label == 0} == set(normal)
    small = peers.fmnist_subset(tmp_path / "data", train_per_class=5, test_per_class=2)
    assert len(load_data([f"fmnist:{small}"]).test) == 20


def test_fmnist_subset_keeps_the_images_of_the_first_five_garments_the_earlier_subset_held(tmp_path, monkeypatch):
    """The {0-4} runs measured before the other splits used a subset drawn for garments 0-4 alone."""
    from vqflow.data import fmnist, one_vs_rest

    monkeypatch.setattr(fmnist, "DEFAULT_ROOT", str(_fake_fmnist(tmp_path / "src")))
    folder = peers.fmnist_subset(tmp_path / "data", train_per_class=5, test_per_class=None)
    rng = np.random.default_rng(peers.FMNIST_DATA_SEED)
    labels = np.repeat(np.arange(10), 12)
    earlier = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 5, replace=False) for c in range(5)]))
    src = fmnist.read_idx(tmp_path / "src" / "train-images-idx3-ubyte", 3)
    kept = fmnist.read_idx(folder / "train-images-idx3-ubyte", 3)
    kept_labels = fmnist.read_idx(folder / "train-labels-idx1-ubyte", 1)
    np.testing.assert_array_equal(kept[np.isin(kept_labels, one_vs_rest.DEFAULT_NORMAL)], src[earlier])


def test_set_items_spread_and_percent():
    assert peers.set_items(["--set", "data.image_size=64", "--epochs", "3", "--set", "a=b"]) == [
        "data.image_size=64",
        "a=b",
    ]
    assert peers.spread([0.5, 1.0, 2.0]) == "1.2 (0.5..2.0)"
    assert peers.spread([3.14159], 2) == "3.14"
    assert peers.spread([None, None]) == "-"
    assert peers.percent(None) is None and peers.percent(0.25) == 25.0


def test_class_metrics_are_vqflows_per_class_with_pixel_keys_only_where_masks_exist():
    from vqflow.data.sample import Record
    from vqflow.data.splits import Splits

    test = [Record(f"{c}{i}", i % 2, c) for c in ("a", "b") for i in range(4)]
    data = peers.Data("x", "x", None, None, [], 8, Splits([], test, True, frozenset({"a"})), {})
    labels = np.array([r.label for r in test])
    masks = np.zeros((8, 8, 8), dtype=bool)
    masks[labels == 1, 2:4, 2:4] = True
    maps = masks.astype(np.float32) + 0.01 * np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    out = peers.score_metrics(data, masks, labels.astype(float), maps)
    assert out["classes"]["a"]["image_auroc"] == 1.0 and out["classes"]["a"]["pixel_auroc"] == 1.0
    assert out["classes"]["b"]["pixel_auroc"] is None
    assert out["mean"]["image_auroc"] == 1.0 and out["mean"]["aupro"] == pytest.approx(1.0)


def test_infer_times_one_pass_and_keeps_order():
    calls = []

    def predict(x):
        calls.append(len(x))
        return x.mean((1, 2, 3)), x[:, 0]

    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    scores, maps, t = peers.infer(predict, images, 4)
    assert calls == [4, 4, 4, 2]  # one warm-up batch, then the pass
    np.testing.assert_array_equal(scores, np.arange(10))
    assert maps.shape == (10, 2, 2) and t["images_per_second"] > 0 and t["seconds"] >= 0


def test_stage_maps_names_the_chosen_stages():
    class Four(torch.nn.Module):
        def forward(self, x):
            return [x * i for i in range(4)]

    taps = peers.StageMaps(Four(), (1, 2))
    out = taps(torch.ones(1, 1, 2, 2))
    assert taps.names == ["f2", "f3"] == list(out)
    assert float(out["f3"].sum()) == 8.0


def test_the_peers_fit_and_score_at_the_input_size():
    """Only where anomalib is installed (the benchmark's own virtualenv)."""
    pytest.importorskip("anomalib")
    peers.anomalib_ready()
    from vqflow.backbones import create_backbone

    backbone = create_backbone("efficientnet_lite0")
    train = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    test = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fits = {
        "patchcore": lambda s: peers.fit_patchcore(backbone, train, s, 4),
        "padim": lambda s: peers.fit_padim(backbone, train, s, 4),
        "fastflow": lambda s: peers.fit_fastflow(backbone, train, s, 4, 64, 1),
    }
    for name, fit in fits.items():
        scores, maps, _ = peers.infer(fit(0)[0], test, 2)
        again, _, _ = peers.infer(fit(0)[0], test, 2)
        assert scores.shape == (3,) and maps.shape == (3, 64, 64), name
        np.testing.assert_allclose(scores, again, rtol=1e-5, err_msg=name)  # seeded


def test_markdown_table_gives_mean_min_max_over_seeds_and_dashes_where_undefined():
    def seed(i_auroc, fit, ips, busy):
        mean = {"image_auroc": i_auroc, "pixel_auroc": None, "aupro": None}
        return {
            "metrics": {"mean": mean, "classes": {"fmnist": mean}},
            "fit": {"seconds": fit, "foreign_cpu_cores": busy},
            "inference": {"images_per_second": ips, "foreign_cpu_cores": 0.0},
        }

    reused = {"metrics": seed(0.9, 0, 0, 0)["metrics"], "fit": {"seconds": None, "reused": True}}
    reused["inference"] = {"images_per_second": 30.0, "foreign_cpu_cores": None}
    report = {
        "seeds": [0, 1],
        "command": "python benchmarks/peers.py",
        "date": "today",
        "machine": {"cpu_count": 2},
        "data": {"name": "fmnist", "image_size": 64, "n_train": 10, "n_test": 20, "classes": ["fmnist"]},
        "settings": {"backbone": "lite0"},
        "definitions": {},
        "models": {
            "padim": {"recipe": "r", "per_seed": {"0": seed(0.8, 10.0, 50.0, 0.5), "1": seed(0.9, 20.0, 70.0, 1.0)}},
            "vqflow": {"recipe": "r", "per_seed": {"0": reused}},
        },
    }
    text = peers.markdown(report)
    assert "| padim | 85.0 (80.0..90.0) | - | - | 15 (10..20) | 60.0 (50.0..70.0) | 1.0 / 0.0 |" in text
    assert "| vqflow | 90.0 | - | - | - | 30.0 | 0.0 / 0.0 |" in text
    assert "| fmnist | 85.0 (80.0..90.0) | 90.0 |" in text


def test_vqflow_trains_the_fast_presets_epochs_unless_told():
    from vqflow import config
    from vqflow.data.splits import Splits

    data = peers.Data("demo", "demo", None, None, [], 256, Splits([], [], True, frozenset()), {})
    args = peers.parse_args(["--data", "demo"])
    peers.resolve_defaults(args, data)
    assert args.epochs == config.resolve(None, None, None).train.epochs == 40
    args = peers.parse_args(["--data", "demo", "--epochs", "3"])
    peers.resolve_defaults(args, data)
    assert args.epochs == 3


def _split_report(path: Path, normal: list[int], models: dict[str, dict[str, float]]) -> Path:
    per = {m: {"per_seed": {s: {"metrics": {"mean": {"image_auroc": v}}} for s, v in seeds.items()}}
           for m, seeds in models.items()}  # fmt: skip
    path.write_text(json.dumps({"data": {"normal_classes": normal}, "models": per}))
    return path


def test_four_split_table_merges_files_and_averages_each_seed_over_the_splits(tmp_path):
    import peers_splits

    splits = ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [0, 2, 4, 6, 8], [1, 3, 5, 7, 9])
    files = []
    for i, normal in enumerate(splits):
        files.append(_split_report(tmp_path / f"p{i}.json", normal, {"patchcore": {"0": 0.9 + i / 100, "1": 0.8}}))
        vq = {"0": 0.5 + i / 10} if i < 3 else {"0": 0.8, "1": 0.9}  # seed 1 misses three splits
        files.append(_split_report(tmp_path / f"v{i}.json", normal, {"vqflow": vq}))
    table = peers_splits.collect(files)
    assert table["vqflow"]["13579"] == {"0": 80.0, "1": 90.0}
    assert peers_splits.split_means(table["patchcore"]) == pytest.approx([91.5, 80.0])
    assert peers_splits.split_means(table["vqflow"]) == pytest.approx([np.mean([50, 60, 70, 80])])
    peers_splits.main([str(f) for f in files])
    md = (tmp_path / "peers_fmnist_splits.md").read_text()
    assert "| vqflow | 50.0 | 60.0 | 70.0 | 85.0 (80.0..90.0) | 65.0 (1 seed) |" in md
    with pytest.raises(SystemExit, match="in two files"):
        peers_splits.collect([files[0], files[0]])


def test_normal_garments_are_parsed_for_fmnist_only():
    assert peers.parse_args(["--data", "fmnist"]).normal == [0, 1, 2, 3, 4]
    assert peers.parse_args(["--data", "fmnist", "--normal", "0,2,4,6,8"]).normal == [0, 2, 4, 6, 8]
    assert peers.parse_args(["--data", "demo"]).normal is None
    with pytest.raises(SystemExit, match="fmnist only"):
        peers.parse_args(["--data", "demo", "--normal", "1,2"])
    assert peers.normal_tag([5, 6, 7, 8, 9]) == ["normal56789"] and peers.normal_tag(None) == []


def test_dev_data_is_built_once_by_the_calibration_benchmarks_builder_and_loaded_as_mvtec(tmp_path, monkeypatch):
    from data_trees import mvtec_tree

    built = []

    def build_dev(root: Path) -> None:
        built.append(root)
        mvtec_tree(root, {c: {"good": 1, "crack": 1} for c in ("moon", "retina")})

    monkeypatch.setattr(peers.calibration, "build_dev", build_dev)
    args = peers.parse_args(["--data", "dev"])
    for _ in range(2):
        data = peers.prepare_data(args, tmp_path)
        assert data.spec == f"mvtec:{tmp_path / 'data' / 'dev'}"
        assert data.splits.classes == ["moon", "retina"] and data.size == 256
    assert len(built) == 1 and not built[0].exists()  # written beside, then renamed into place


def test_a_data_spec_runs_the_harness_on_the_users_own_set(tmp_path):
    from data_trees import mvtec_tree

    root = tmp_path / "my textures"
    mvtec_tree(root, {c: {"good": 2, "crack": 1} for c in ("cork", "felt")})
    args = peers.parse_args(["--data", f"mvtec:{root}", "--classes", "felt"])
    data = peers.prepare_data(args, tmp_path / "work")
    assert (data.name, data.spec, data.splits.classes, data.size) == (
        "mvtec_my_textures",
        f"mvtec:{root}",
        ["felt"],
        256,
    )
    assert peers.parse_args(["--data", "dev"]).data == "dev" and peers.set_name("dev") == "dev"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("mvtec:/no/such/set", "no folder /no/such/set"),
        ("imagenet:/x", "unknown data format"),
        ("fmnist:/x", "expects demo"),
    ],
)
def test_a_bad_data_spec_is_refused_in_words(value, says, capsys):
    with pytest.raises(SystemExit):
        peers.parse_args(["--data", value])
    assert says in capsys.readouterr().err
