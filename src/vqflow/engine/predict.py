"""Prediction on new images: score, heatmap overlay and verdict per image, scores.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from vqflow.atomic import atomic_write_text
from vqflow.data import ImageDataset, denormalize
from vqflow.data.sample import Record, Sample, collate
from vqflow.engine.build import TrainedRun, inference_batch_size, load_run
from vqflow.engine.progress import progress
from vqflow.errors import VQFlowError
from vqflow.report import overlay, save_png

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
COLUMNS = ["path", "class", "label", "score", "verdict", "threshold", "concept", "heatmap", "error"]


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, and image files (by suffix) found recursively in folders, sorted."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise VQFlowError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise VQFlowError(f"{p} does not exist; pass image files or folders")
    return found


def threshold_for(run: TrainedRun, concept: int) -> float:
    """The concept's own threshold where fit had enough held-out normals of it, else the global one."""
    th = run.thresholds
    return float(th.get("per_concept", {}).get(str(concept), th["global"]))


def predict(run: str | Path, inputs: list[str], out: str | Path, device: str = "auto", quiet: bool = False) -> list[dict]:
    """Score images; write OUT/scores.csv and OUT/heatmaps/*.png. Unreadable files get an
    error in their row and the rest still get results."""
    tr = load_run(run, device)
    if not tr.thresholds:
        raise VQFlowError(
            f"run {tr.folder} has no verdict thresholds (fit did not finish); continue it with "
            f"'vqflow fit --out {tr.folder} --resume'"
        )
    paths = collect_images(inputs)
    out = Path(out)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    size = tr.cfg.data.image_size
    dataset = ImageDataset([Record(str(p), 0, "") for p in paths], size)
    lo, hi = tr.payload.get("calibration", {}).get("map_range", [None, None])
    rows: list[dict] = []
    pending: list[tuple[int, Sample]] = []

    def flush() -> None:
        batch = collate([s for _, s in pending])
        with torch.no_grad():
            scores, maps, concepts = tr.detector(batch.image.to(tr.device))
        for (i, sample), score, amap, concept in zip(pending, scores.tolist(), maps.cpu().numpy(), concepts.tolist()):
            thr = threshold_for(tr, int(concept))
            heat = out / "heatmaps" / f"{i:05d}_{paths[i].stem}.png"
            save_png(overlay(denormalize(sample.image), amap, vmin=lo, vmax=hi), heat)
            rows[i].update(score=f"{score:.8g}", verdict="anomalous" if score > thr else "normal",
                           threshold=f"{thr:.8g}", concept=int(concept), heatmap=str(heat))
        pending.clear()

    with progress(total=len(paths), desc="predict", unit="img", quiet=quiet) as bar:
        for i, p in enumerate(paths):
            rows.append({k: "" for k in COLUMNS} | {"path": str(p)})
            try:
                pending.append((i, dataset[i]))
            except VQFlowError as e:
                rows[i]["error"] = str(e)
            if len(pending) == inference_batch_size(tr.cfg, tr.device):
                flush()
            bar.update(1)
        if pending:
            flush()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", buf.getvalue())
    return rows
