"""Evaluation: every class of the test set separately; metrics.json/.csv, scores.csv, report."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vqflow.atomic import atomic_write_text
from vqflow.data import ImageDataset, denormalize, load_data
from vqflow.data.sample import collate
from vqflow.engine.build import TrainedRun, inference_batch_size, load_run
from vqflow.engine.progress import progress, say
from vqflow.metrics import METRIC_KEYS, compute_class_metrics, summarize


@dataclass
class ScoredSet:
    """Everything the model said about a list of images."""

    paths: list[str]
    classes: list[str]
    labels: np.ndarray  # (N,) int
    scores: np.ndarray  # (N,) float64
    maps: np.ndarray  # (N, H, W) float32
    masks: np.ndarray | None  # (N, H, W) bool
    concepts: np.ndarray  # (N,) int
    code_usage: dict[str, np.ndarray]


def score_dataset(
    run: TrainedRun, dataset: ImageDataset, quiet: bool = False, desc: str = "scoring", map_size: int | None = None
) -> ScoredSet:
    """Run the detector over a dataset, keeping scores, maps (at `map_size`), masks, concepts
    and code usage."""
    det, dev, cfg = run.detector, run.device, run.cfg
    size = cfg.data.image_size
    map_size = map_size or size
    books = {k: q.codebook.shape[0] for k, q in det.head.quantizers().items()}
    loader = DataLoader(
        dataset,
        batch_size=inference_batch_size(cfg, dev),
        shuffle=False,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
    )
    n = len(dataset)
    maps = np.empty((n, map_size, map_size), dtype=np.float32)
    # Only datasets with ground truth get a mask array (10,000 CIFAR masks would be 650 MB).
    masks = np.zeros((n, size, size), dtype=bool) if dataset.has_masks else None
    scores, concepts, labels, paths, classes = [], [], [], [], []
    usage: dict[str, np.ndarray] = {}
    start = 0
    with torch.no_grad(), progress(total=n, desc=desc, unit="img", quiet=quiet) as bar:
        for batch in loader:
            pred = det(batch.image.to(dev))
            stop = start + len(batch.path)
            pix = pred.anomaly_map
            if map_size != size:
                pix = torch.nn.functional.adaptive_avg_pool2d(pix[:, None], map_size)[:, 0]
            maps[start:stop] = pix.cpu().numpy()
            if masks is not None and batch.mask is not None:
                masks[start:stop] = batch.mask[:, 0].numpy() > 0.5
            scores.append(pred.score.double().cpu().numpy())
            concepts.append(pred.concept.cpu().numpy())
            for level, idx in pred.codes.items():
                counts = np.bincount(idx.flatten().cpu().numpy(), minlength=books[level])
                usage[level] = usage.get(level, 0) + counts
            labels += batch.label.tolist()
            paths += batch.path
            classes += batch.cls
            start = stop
            bar.update(len(batch.path))
    return ScoredSet(
        paths,
        classes,
        np.asarray(labels, dtype=int),
        np.concatenate(scores),
        maps,
        masks,
        np.concatenate(concepts),
        usage,
    )


def class_metrics(s: ScoredSet, mask_classes: frozenset[str] | set[str]) -> dict:
    """Per-class metrics and their means (metrics.json layout); pixel metrics for the
    classes that have ground-truth masks."""
    per_class = {}
    cls_arr = np.asarray(s.classes)
    for cls in sorted(set(s.classes)):
        sel = np.flatnonzero(cls_arr == cls)
        masks = s.masks[sel] if s.masks is not None and cls in mask_classes else None
        per_class[cls] = compute_class_metrics(
            s.labels[sel], s.scores[sel], masks, s.maps[sel] if masks is not None else None
        )
    return summarize(per_class)


def scores_csv(s: ScoredSet) -> str:
    """path, class, label, score, one row per image."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "class", "label", "score"])
    for i in range(len(s.paths)):
        w.writerow([s.paths[i], s.classes[i], int(s.labels[i]), f"{s.scores[i]:.8g}"])
    return buf.getvalue()


def metrics_csv(metrics: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["class", *METRIC_KEYS])
    rows = [*metrics["classes"].items(), ("mean", metrics["mean"])]
    for name, row in rows:
        w.writerow([name, *("" if row.get(k) is None else f"{row[k]:.6f}" for k in METRIC_KEYS)])
    return buf.getvalue()


def evaluate(run: str | Path, device: str = "auto", quiet: bool = False, report: bool = True) -> dict:
    """Score the run's test set; write metrics.json, metrics.csv, scores.csv and report.html."""
    tr = load_run(run, device)
    cfg = tr.cfg
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    dataset = ImageDataset(splits.test, cfg.data.image_size, has_masks=splits.has_masks)
    # Without masks the maps only feed the gallery: keep them small (10,000 CIFAR images).
    scored = score_dataset(tr, dataset, quiet, desc="test", map_size=None if splits.has_masks else 64)
    metrics = class_metrics(scored, splits.mask_classes)
    chosen = tr.payload.get("chosen_epoch", tr.payload.get("epoch"))
    metrics["run"] = {
        "epoch": chosen,
        "selection": cfg.train.select,
        "selection_note": "last epoch"
        if cfg.train.select == "last"
        else "epoch with the lowest NLL on held-out training normals (no test labels used)",
        "n_test_images": len(scored.paths),
        "preset": cfg.preset,
        "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
    }
    folder = tr.folder
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(folder / "metrics.csv", metrics_csv(metrics))
    atomic_write_text(folder / "scores.csv", scores_csv(scored))
    if report:
        from vqflow.report import ReportData, write_report

        notes = [
            f"preset {cfg.preset}, backbone {cfg.model.backbone}, {cfg.data.image_size} px, data {', '.join(cfg.data.specs)}",
            f"evaluated at epoch {chosen} ({metrics['run']['selection_note']}); test labels were never used to choose anything",
            f"image score: top {cfg.score.topk:.0%} mean of the {cfg.score.image_map} map; pixel map: "
            f"{cfg.score.pixel_map}; blur sigma {cfg.score.blur_sigma}; normalisation {cfg.score.normalization}",
        ]
        if any(s == "demo" for s in cfg.data.specs):
            notes.append("the demo set's defects are synthetic, drawn on real textures")
        data = ReportData(
            title=folder.resolve().name,
            metrics=metrics,
            paths=scored.paths,
            classes=scored.classes,
            labels=scored.labels,
            scores=scored.scores,
            maps=scored.maps,
            masks=scored.masks,
            images=lambda i: denormalize(dataset[i].image),
            concepts=scored.concepts,
            code_usage=scored.code_usage,
            notes=notes,
            map_range=tr.calibration.map_range,
        )
        path = write_report(folder, data)
        say(f"report: {path}", quiet)
    return metrics
