"""Evaluation: every class of the test set separately; metrics.json/.csv, scores.csv, report."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from vqflow.atomic import atomic_write_text
from vqflow.config import load_yaml
from vqflow.data import ImageDataset, denormalize, load_data
from vqflow.data.sample import collate
from vqflow.engine.build import TrainedRun, inference_batch_size, load_run
from vqflow.engine.fit import stop_on_signals
from vqflow.engine.progress import progress, say, warn
from vqflow.errors import VQFlowError
from vqflow.metrics import METRIC_KEYS, compute_class_metrics, summarize
from vqflow.runlock import hold_run_folder

if TYPE_CHECKING:
    from vqflow.report.decisions import Decisions

# The outputs of one evaluation, in the order they are moved into the run folder: metrics.json
# last, so that a new metrics.json means every other output is new too.
OUTPUTS = ("report_files", "report.html", "scores.csv", "metrics.csv", "metrics.json")
STAGING_PREFIX = ".test-staging-"


class EvaluationInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during test; the message says which outputs the run folder holds.

    A KeyboardInterrupt, so that no `except Exception` between the signal and the CLI swallows
    it; the CLI exits with 128 + signum.
    """

    def __init__(self, signum: int, kept: str = "") -> None:
        super().__init__(f"interrupted; {kept}" if kept else "interrupted")
        self.signum = signum


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


def scores_csv(s: ScoredSet, d: Decisions | None = None) -> str:
    """path, class, label, score, concept, one row per image; with decisions also the threshold
    each image was judged by and its verdict, as `vqflow predict` writes them."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "class", "label", "score", "concept", *(["threshold", "verdict"] if d else [])])
    for i in range(len(s.paths)):
        row = [s.paths[i], s.classes[i], int(s.labels[i]), f"{s.scores[i]:.8g}", int(s.concepts[i])]
        if d is not None:
            row += [f"{d.thresholds[i]:.8g}", "anomalous" if d.flagged[i] else "normal"]
        w.writerow(row)
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
    """Score the run's test set; write metrics.json, metrics.csv, scores.csv and report.html as one unit.

    All outputs are built in a staging folder inside the run, then moved into place (see
    `commit_outputs`): SIGINT/SIGTERM (EvaluationInterrupted) leave either all the previous
    outputs or all the new ones, never a mix. The run folder is locked meanwhile.
    """
    folder = Path(run)
    with hold_run_folder(folder, "test", "wait for it to finish", create=False):
        with stop_on_signals(raise_as=EvaluationInterrupted) as flag:
            staging = folder / f"{STAGING_PREFIX}{os.getpid()}"
            try:
                remove_stale_staging(folder)
                metrics = _stage_outputs(folder, staging, device, quiet, report)
                flag["defer"] = True  # a signal now waits for the move to end (checked below)
                commit_outputs(staging, folder)
            except EvaluationInterrupted as e:
                flag["defer"] = True
                raise EvaluationInterrupted(e.signum, _kept_message(folder)) from None
            finally:
                flag["defer"] = True
                shutil.rmtree(staging, ignore_errors=True)
            if flag["signum"] is not None:
                raise EvaluationInterrupted(flag["signum"], f"the new test outputs in {folder} are complete")
    if report:
        say(f"report: {(folder / 'report.html').resolve()}", quiet)
    return metrics


def _kept_message(folder: Path) -> str:
    """What an interrupted test leaves: the run folder's outputs as they were before it."""
    if (folder / "metrics.json").exists():
        return f"the previous test outputs in {folder} are unchanged"
    return f"no test outputs were written to {folder}"


def _stage_outputs(folder: Path, staging: Path, device: str, quiet: bool, report: bool) -> dict:
    """Load the run, score its test set and write every output into `staging` (metrics.json
    last: its presence marks a complete staging folder); return the metrics."""
    tr = load_run(folder, device)
    cfg = tr.cfg
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    dataset = ImageDataset(splits.test, cfg.data.image_size, has_masks=splits.has_masks)
    # Without masks the maps only feed the gallery: keep them small (10,000 CIFAR images).
    scored = score_dataset(tr, dataset, quiet, desc="test", map_size=None if splits.has_masks else 64)
    metrics = class_metrics(scored, splits.mask_classes)
    status = fit_status(folder, tr.payload)
    chosen = status["epoch"]
    metrics["run"] = {
        "epoch": chosen,
        "selection": cfg.train.select,
        "selection_note": "last epoch"
        if cfg.train.select == "last"
        else "epoch with the lowest NLL on held-out training normals (no test labels used)",
        "finished": status["finished"],
        "planned_epochs": status["planned_epochs"],
        "n_test_images": len(scored.paths),
        "preset": cfg.preset,
        "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
    }
    if not status["finished"]:
        warn(
            f"the fit of {folder} did not finish: testing epoch {chosen} of {status['planned_epochs']} planned; "
            f"finish it with 'vqflow fit --out {folder} --resume', then test again"
        )
    from vqflow.report.decisions import decide, decision_summary

    decisions = decide(tr.calibration, scored.scores, scored.concepts)
    if decisions is not None:
        metrics["decisions"] = decision_summary(list(scored.classes), scored.labels, decisions)
    staging.mkdir()
    atomic_write_text(staging / "metrics.csv", metrics_csv(metrics))
    atomic_write_text(staging / "scores.csv", scores_csv(scored, decisions))
    if report:
        from vqflow.report import ReportData, write_report

        notes = [
            f"preset {cfg.preset}, backbone {cfg.model.backbone}, {cfg.data.image_size} px, data {', '.join(cfg.data.specs)}",
            f"evaluated at epoch {chosen} ({metrics['run']['selection_note']}); test labels were never used to choose anything",
            f"image score: top {cfg.score.topk:.0%} mean of the {cfg.score.image_map} map; pixel map: "
            f"{cfg.score.pixel_map}; blur sigma {cfg.score.blur_sigma}; normalisation {cfg.score.normalization}",
        ]
        if not status["finished"]:
            notes.insert(0, f"unfinished fit: epoch {chosen} of {status['planned_epochs']} planned epochs evaluated")
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
            calibration=tr.calibration,
            train_log=folder / "train_log.jsonl",
        )
        write_report(staging, data)
    atomic_write_text(staging / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def fit_status(folder: Path, payload: dict) -> dict:
    """Whether the evaluated checkpoint ends the run's planned training: {"finished", "epoch"
    (the epoch evaluated), "planned_epochs"}.

    Only a final model (the one checkpoint with a calibration) of as many epochs as the run's
    latest config.yaml plans is finished: an intermediate checkpoint is not, nor the previous
    final model of a run whose `fit --resume --epochs N` was interrupted.
    """
    planned = (payload.get("config") or {}).get("train", {}).get("epochs")
    try:
        planned = int(load_yaml(folder / "config.yaml")["train"]["epochs"])  # rewritten by each fit
    except (VQFlowError, KeyError, TypeError, ValueError):
        pass
    trained = payload.get("epoch")
    finished = bool(payload.get("calibration")) and (planned is None or trained is None or trained >= planned)
    return {"finished": finished, "epoch": payload.get("chosen_epoch", trained), "planned_epochs": planned}


def remove_stale_staging(folder: Path) -> None:
    """Delete staging folders a killed test left (the caller holds the run folder's lock)."""
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def commit_outputs(staging: Path, folder: Path) -> None:
    """Move the staged outputs over the run folder's, in OUTPUTS order.

    Each move is one atomic rename; the set is not atomic as a whole. The caller defers
    SIGINT/SIGTERM meanwhile, so that they leave all old or all new outputs. A hard kill (or
    power loss) within these few renames can leave a mix; it leaves the staging folder behind
    too, which marks it (the next test removes it and writes every output again), and
    metrics.json, moved last, is then still the old one. An output this evaluation did not
    make (report.html under --no-report) is removed: it would describe an older evaluation.
    """
    trash = staging / ".previous"
    trash.mkdir()
    for name in OUTPUTS:
        new, old = staging / name, folder / name
        if old.is_dir() and not old.is_symlink():
            os.replace(old, trash / name)  # a folder with files in it cannot be replaced by a rename
        if new.exists():
            os.replace(new, old)
        elif old.exists() or old.is_symlink():
            os.replace(old, trash / name)
            warn(
                f"removed the previous {name} of {folder}: it described an older evaluation (test without --no-report)"
            )
