"""Export a trained run's Detector as one ONNX graph (dynamic batch axis) plus a JSON sidecar,
and check it against the torch module. Needs the `onnx` package (and onnxruntime to check)."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqflow import __version__
from vqflow.atomic import atomic_path, atomic_write_text
from vqflow.cache import cache_dir
from vqflow.engine.build import TrainedRun, checkpoint_path, load_run
from vqflow.errors import VQFlowError
from vqflow.export.sidecar import INPUT_NAME, OUTPUT_NAMES, Sidecar, sidecar_path
from vqflow.model.detector import Detector

OPSET = 17
CACHED_EXPORTS = 8  # run exports kept in $VQFLOW_CACHE/onnx, the most recently used
GRAPH_REVISION = 3  # bumped when the exported graph changes (2: pads folded into convs, 3: broadcast_conv3x3), renewing cached exports


class ExportGraph(nn.Module):
    """The Detector with tensor outputs only: images -> (score, anomaly_map, concept)."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.detector(images)
        return pred.score, pred.anomaly_map, pred.concept


@dataclass
class Parity:
    """Largest differences between ONNX Runtime and torch on the same inputs, relative to the
    range of the torch outputs (maps, scores) and as a count (concepts)."""

    score: float
    anomaly_map: float
    concept_mismatches: int
    images: int

    def ok(self, tol: float = 1e-4) -> bool:
        return self.score <= tol and self.anomaly_map <= tol and self.concept_mismatches == 0


def export_onnx(run: str | Path | TrainedRun, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write the run's detector to `out` (default RUN/export/model.onnx) and its sidecar
    beside it (model.json); both atomically. Returns their paths. `run`: a run folder, or
    one already loaded (on the CPU)."""
    try:
        import onnx

        from vqflow.export.passes import fold_pads_into_convs
    except ImportError:
        raise VQFlowError(
            "ONNX export needs the onnx package: pip install onnx onnxruntime (or pip install 'vqflow[onnx]')"
        ) from None
    tr = run if isinstance(run, TrainedRun) else load_run(run, "cpu")
    path = Path(out) if out is not None else tr.folder / "export" / "model.onnx"
    if path.suffix != ".onnx":
        raise VQFlowError(f"--out {path} must end in .onnx (the sidecar goes beside it as .json)")
    if path.is_dir():
        raise VQFlowError(f"--out {path} is a folder; give a file name ending in .onnx")
    size = tr.cfg.data.image_size
    graph = ExportGraph(tr.detector).eval()
    dummy = torch.zeros(2, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            graph,
            (dummy,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
            opset_version=OPSET,
            dynamo=False,
        )
        model = onnx.load(str(tmp))
        fold_pads_into_convs(model)
        onnx.save(model, str(tmp))
    side = sidecar_path(path)
    atomic_write_text(side, _sidecar(tr).to_json())
    return path, side


def cached_export(run: str | Path) -> tuple[Path, bool]:
    """(path, exported now) of the run's ONNX graph in the cache, $VQFLOW_CACHE/onnx/<key>/model.onnx,
    exported on first use. The key hashes the checkpoint's bytes with the vqflow, torch and opset
    versions and the graph revision, so a refit run or an upgrade exports afresh and the run folder is never written."""
    folder = Path(run)
    ckpt = checkpoint_path(folder)
    if not ckpt.is_file():
        load_run(folder, "cpu")  # its own error: no run folder, fit not finished...
    digest = hashlib.sha256(f"{__version__} {torch.__version__} {OPSET} {GRAPH_REVISION}".encode())
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    path = cache_dir() / "onnx" / digest.hexdigest()[:24] / "model.onnx"
    if path.is_file() and sidecar_path(path).is_file():
        os.utime(path.parent)  # recently used: pruned last
        return path, False
    export_onnx(load_run(folder, "cpu"), path)
    prune_exports(path.parent.parent, CACHED_EXPORTS)
    return path, True


def prune_exports(root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used export folders below `root` (about 20 MB
    each in the fast preset), so that refitting and predicting again and again does not fill
    the disk."""
    folders = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _sidecar(tr: TrainedRun) -> Sidecar:
    s = tr.cfg.score
    size = tr.cfg.data.image_size
    return Sidecar(
        input_size=(size, size),
        calibration=tr.calibration,
        vqflow_version=__version__,
        run={
            "preset": tr.cfg.preset,
            "backbone": tr.cfg.model.backbone,
            "epoch": tr.payload.get("chosen_epoch", tr.payload.get("epoch")),
            "score": {
                "image_score": tr.detector.image_score,
                "knn_k": tr.detector.knn_k,
                "knn_bank_images": int(tr.detector.knn_bank.shape[0]),
                # 0 where the run was calibrated without the training normals' local parts (absolute)
                "local_neighbours": tr.detector.local_neighbours if tr.detector.knn_local.numel() else 0,
                "image_map": s.image_map,
                "pixel_map": s.pixel_map,
                "topk": s.topk,
                "blur_sigma": s.blur_sigma,
                "normalization": s.normalization,
            },
        },
    )


def check_parity(det: Detector, onnx_path: str | Path, images: np.ndarray) -> Parity:
    """Run the torch Detector (on the CPU) and ONNX Runtime on the same model inputs (B, 3, H, W)."""
    from vqflow.export.inferencer import OnnxInferencer

    with torch.no_grad():
        pred = det(torch.from_numpy(images))
    s_ref, m_ref, c_ref = pred.score.double().numpy(), pred.anomaly_map.double().numpy(), pred.concept.numpy()
    s, m, c = OnnxInferencer(onnx_path).run(images)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(float(np.ptp(b)), 1e-12)) if b.size else 0.0

    return Parity(rel(s, s_ref), rel(m.astype(np.float64), m_ref), int((c != c_ref).sum()), int(len(images)))
