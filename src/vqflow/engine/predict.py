"""Prediction on new images: score, verdict, heatmap (at the input's own resolution) per image.

The model runs as an exported ONNX graph in onnxruntime (`--onnx FILE`, or a run's graph
exported once into the cache: `--run` where onnxruntime is installed) or as the torch
Detector (`--run --engine torch`); both feed the same pipeline: images are read ahead in a
thread, outputs written behind in another, so that decoding and encoding overlap the model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqflow.atomic import atomic_path, atomic_write_text
from vqflow.calibration import Calibration
from vqflow.engine.progress import progress, warn
from vqflow.errors import VQFlowError
from vqflow.imageio import IMAGENET_MEAN, IMAGENET_STD, model_input, read_rgb, resize_map
from vqflow.runlock import hold_run_folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
COLUMNS = [
    "path",
    "class",
    "label",
    "score",
    "verdict",
    "threshold",
    "concept",
    "concept_class",
    "heatmap",
    "map",
    "error",
]

# images (B, 3, H, W) float32 -> scores (B,), maps (B, H, W), concepts (B,)
BatchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class Model:
    """What the pipeline needs of a model, whichever runtime runs it."""

    run_batch: BatchFn
    input_size: tuple[int, int]  # (H, W)
    calibration: Calibration
    batch_size: int
    folder: Path | None = None  # the run folder, when there is one
    mean: tuple[float, ...] = IMAGENET_MEAN  # input normalisation (an export's sidecar states its own)
    std: tuple[float, ...] = IMAGENET_STD


def collect_images(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, root) pairs: files as given (root: their folder), and image files (by suffix)
    found recursively in folders (root: that folder), in sorted order."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise VQFlowError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(f, p) for f in files]
        elif p.is_file():
            found.append((p, p.parent))
        else:
            raise VQFlowError(f"{p} does not exist; pass image files or folders")
    return found


def output_names(files: list[tuple[Path, Path]]) -> list[str]:
    """A stable output stem per input, from its path below its root ('good/000' for
    root/good/000.png), whatever the order of the inputs; where two inputs would share a
    stem, each gets a short hash of its full path."""
    stems = [f.relative_to(root).with_suffix("").as_posix() for f, root in files]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    out = []
    for (f, _), s in zip(files, stems):
        if seen[s] > 1:
            s = f"{s}_{hashlib.sha1(str(f.resolve()).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
        out.append(s)
    return out


def _load(path: Path, model: Model) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """(width, height), the RGB pixels and the model input of one file."""
    img = read_rgb(path)
    return img.size, np.asarray(img), model_input(img, model.input_size, model.mean, model.std)


def _read_ahead(paths: list[Path], model: Model, pool: ThreadPoolExecutor, depth: int) -> Iterator:
    """Loaded images in order, read `depth` files ahead in `pool`; a failure comes back as
    the VQFlowError in place of the image."""
    pending: deque[Future] = deque()
    it = iter(paths)
    for p in it:
        pending.append(pool.submit(_load, p, model))
        if len(pending) >= depth:
            break
    while pending:
        fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(_load, nxt, model))
        try:
            yield fut.result()
        except VQFlowError as e:
            yield e


def _write(
    row: dict, rgb: np.ndarray, amap: np.ndarray, calibration: Calibration, heatmap: Path | None, raw: Path | None
) -> None:
    """Heatmap JPEG (calibrated colour range, colour bar) and raw .npy map of one image."""
    if heatmap is not None:
        from vqflow.report.overlay import overlay, save_image, with_colorbar

        lo, hi = calibration.map_range
        save_image(with_colorbar(overlay(rgb, amap, vmin=lo, vmax=hi), lo, hi), heatmap)
        row["heatmap"] = str(heatmap)
    if raw is not None:
        with atomic_path(raw) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, amap.astype(np.float32))
        row["map"] = str(raw)


def run_predict(
    model: Model,
    inputs: list[str],
    out: str | Path,
    threshold: float | None = None,
    heatmaps: bool = True,
    save_maps: bool = False,
    quiet: bool = False,
) -> list[dict]:
    """Score images with `model`; write OUT/scores.csv, OUT/heatmaps/*.jpg and (save_maps)
    OUT/maps/*.npy, maps at each input's own resolution. Each unreadable file is named on
    stderr and in its row; when no file could be read at all, VQFlowError."""
    out = Path(out)
    if model.folder is not None and out.resolve() == model.folder.resolve():
        raise VQFlowError(
            f"--out {out} is the run folder itself; predict would overwrite the run's scores.csv, choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise VQFlowError(f"--out {out} is a file; choose a folder")
    files = collect_images(inputs)
    with hold_run_folder(out, "predict", "wait for it to finish or choose another --out"):
        return _score_into(model, files, out, threshold, heatmaps, save_maps, quiet)


def _score_into(
    model: Model,
    files: list[tuple[Path, Path]],
    out: Path,
    threshold: float | None,
    heatmaps: bool,
    save_maps: bool,
    quiet: bool,
) -> list[dict]:
    """run_predict's work, in an output folder it holds."""
    names = output_names(files)
    paths = [f for f, _ in files]
    cal = model.calibration
    rows: list[dict] = [{k: "" for k in COLUMNS} | {"path": str(p)} for p in paths]
    failed = 0
    with (
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(1) as writer,
        progress(total=len(paths), desc="predict", unit="img", quiet=quiet) as bar,
    ):
        writes: deque[Future] = deque()
        batch: list[tuple[int, np.ndarray, np.ndarray, tuple[int, int]]] = []  # index, input, pixels, (w, h)

        def flush() -> None:
            scores, maps, concepts = model.run_batch(np.stack([b[1] for b in batch]))
            for (i, _, rgb, (w, h)), score, amap, concept in zip(batch, scores, maps, concepts):
                thr, verdict = cal.verdict(float(score), int(concept), threshold)
                rows[i].update(
                    score=f"{float(score):.8g}",
                    verdict=verdict,
                    threshold=f"{thr:.8g}",
                    concept=int(concept),
                    concept_class=cal.concept_classes.get(int(concept), ""),
                )
                while len(writes) > 4 * model.batch_size:  # bound what waits to be written
                    writes.popleft().result()
                writes.append(
                    writer.submit(
                        _write,
                        rows[i],
                        rgb,
                        resize_map(amap, w, h),
                        cal,
                        out / "heatmaps" / f"{names[i]}.jpg" if heatmaps else None,
                        out / "maps" / f"{names[i]}.npy" if save_maps else None,
                    )
                )
            bar.update(len(batch))
            batch.clear()

        for i, loaded in enumerate(_read_ahead(paths, model, reader, 2 * model.batch_size)):
            if isinstance(loaded, VQFlowError):
                rows[i]["error"] = str(loaded)
                warn(str(loaded))
                failed += 1
                bar.update(1)
                continue
            size, rgb, x = loaded
            batch.append((i, x, rgb, size))
            if len(batch) == model.batch_size:
                flush()
        if batch:
            flush()
        while writes:
            writes.popleft().result()  # re-raise a failed write (disk full...) here
    if failed == len(paths):
        raise VQFlowError(
            f"none of the {len(paths)} input image(s) could be read (see the lines above); nothing was scored"
        )
    buf = io.StringIO()
    writer_csv = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer_csv.writeheader()
    writer_csv.writerows(rows)
    atomic_write_text(out / "scores.csv", buf.getvalue())
    return rows


def torch_model(run: str | Path, device: str = "auto") -> Model:
    """A trained run's Detector (torch; head traced and frozen) behind the pipeline's interface."""
    import torch

    from vqflow.engine.build import inference_batch_size, load_run
    from vqflow.model.detector import frozen_forward

    tr = load_run(run, device)
    size = tr.cfg.data.image_size
    forward = frozen_forward(tr.detector, (size, size))

    def run_batch(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        score, amap, concept = forward(torch.from_numpy(x).to(tr.device))
        return score.double().cpu().numpy(), amap.float().cpu().numpy(), concept.cpu().numpy()

    return Model(run_batch, (size, size), tr.calibration, inference_batch_size(tr.cfg, tr.device), tr.folder)


def onnx_model(path: str | Path, batch_size: int = 4) -> Model:
    """An exported ONNX graph (and its JSON sidecar) behind the pipeline's interface."""
    from vqflow.export.inferencer import OnnxInferencer

    inf = OnnxInferencer(path, spin=False)  # the reader and writer threads share the cores
    return Model(inf.run, inf.input_size, inf.calibration, batch_size, mean=inf.sidecar.mean, std=inf.sidecar.std)


ENGINES = ("auto", "onnx", "torch")


def onnxruntime_available() -> bool:
    """True where both the ONNX exporter (onnx) and onnxruntime import."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def run_model(run: str | Path, device: str = "auto", engine: str = "auto", quiet: bool = False) -> Model:
    """A run folder's model for the pipeline. "auto": onnxruntime on the CPU where it is installed
    (a graph exported once into the cache; 1.3-2x torch's speed on CPU, benchmarks/results/predict.md),
    torch on a GPU or without onnxruntime, or when the export fails; "onnx" and "torch" force one."""
    if engine not in ENGINES:
        raise VQFlowError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "onnx" and device not in ("auto", "cpu"):
        raise VQFlowError(f"--engine onnx runs on the CPU, not --device {device}; use --engine torch for a GPU")
    if engine == "torch":
        return torch_model(run, device)
    if engine == "auto":
        from vqflow.engine.build import resolve_device

        if not onnxruntime_available() or resolve_device(device).type != "cpu":
            return torch_model(run, device)
    try:
        from vqflow.export.onnx import cached_export

        path, exported = cached_export(run)
    except (VQFlowError, OSError) as e:
        if engine == "onnx":
            raise
        warn(f"could not export the run for onnxruntime ({e}); predicting with torch")
        return torch_model(run, device)
    if exported and not quiet:
        print(f"exported the run once for onnxruntime: {path} (--engine torch skips this)", file=sys.stderr)
    model = onnx_model(path)
    model.folder = Path(run)
    return model


def predict(
    run: str | Path | None,
    inputs: list[str],
    out: str | Path,
    device: str = "auto",
    quiet: bool = False,
    threshold: float | None = None,
    heatmaps: bool = True,
    save_maps: bool = False,
    onnx: str | Path | None = None,
    engine: str = "auto",
) -> list[dict]:
    """Score images with an exported ONNX file (`onnx`) or a run's model (`engine`: see
    run_model); rows as in OUT/scores.csv."""
    if onnx is not None:
        model = onnx_model(onnx)
        if run is not None:
            model.folder = Path(run)
    elif run is not None:
        model = run_model(run, device, engine, quiet)
    else:
        raise VQFlowError("predict needs --run DIR (a trained run) or --onnx FILE (an exported model)")
    return run_predict(model, inputs, out, threshold=threshold, heatmaps=heatmaps, save_maps=save_maps, quiet=quiet)
