"""Torch-free inference on an exported model: numpy, Pillow and onnxruntime only.

    from vqflow.export.inferencer import OnnxInferencer
    inf = OnnxInferencer("model.onnx")          # reads model.json beside it
    for r in inf.predict(["a.png", "b.jpg"]):
        print(r.path, r.score, r.verdict, r.anomaly_map.shape)   # map at the image's own size

Preprocessing, map resizing and verdicts are the same functions the torch path uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqflow.calibration import Calibration
from vqflow.errors import VQFlowError, first_line
from vqflow.export.sidecar import INPUT_NAME, Sidecar, sidecar_path
from vqflow.imageio import model_input, read_rgb, resize_map


@dataclass
class Result:
    """One image's outcome; `error` is set (and the rest empty) where the file was unreadable."""

    path: str
    score: float = float("nan")
    threshold: float = float("nan")
    verdict: str = ""  # "anomalous" or "normal"
    concept: int = -1
    anomaly_map: np.ndarray | None = None  # (H, W) float32 at the image's own resolution
    error: str = ""


class OnnxInferencer:
    """Runs `vqflow export`'s graph with onnxruntime; `run` on model inputs, `predict` on files."""

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        sidecar: str | os.PathLike | None = None,
        threads: int | None = None,
        providers: list[str] | None = None,
        spin: bool = True,
    ) -> None:
        """`spin=False` lets idle worker threads sleep: slower on a quiet machine, faster when
        other threads (image decoding, heatmap writing) share the cores."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise VQFlowError(
                "ONNX inference needs onnxruntime: pip install onnxruntime (or pip install 'vqflow[onnx]')"
            ) from None
        path = Path(onnx_path)
        if not path.is_file():
            raise VQFlowError(f"ONNX file {path} does not exist; write one with 'vqflow export --run DIR'")
        self.sidecar = Sidecar.read(sidecar or sidecar_path(path))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise VQFlowError(f"cannot load ONNX file {path} ({first_line(e)}); export the run again") from None

    @property
    def input_size(self) -> tuple[int, int]:
        return self.sidecar.input_size

    @property
    def calibration(self) -> Calibration:
        return self.sidecar.calibration

    def preprocess(self, path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int]]:
        """(3, H, W) model input of an image file, and the file's own (width, height)."""
        img = read_rgb(path)
        return model_input(img, self.input_size, self.sidecar.mean, self.sidecar.std), img.size

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model inputs (B, 3, H, W) float32 -> scores (B,), maps (B, H, W), concepts (B,)."""
        score, amap, concept = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
        return score.astype(np.float64), amap, concept

    def predict(
        self, paths: list[str | os.PathLike], threshold: float | None = None, batch_size: int = 4
    ) -> list[Result]:
        """Score, verdict and map (at each image's own resolution) for image files; a file that
        cannot be read gets a Result with `error` set. `threshold` overrides the calibrated ones."""
        results = [Result(str(p)) for p in paths]
        for start in range(0, len(paths), batch_size):
            part: list[tuple[int, np.ndarray, tuple[int, int]]] = []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    x, size = self.preprocess(paths[i])
                    part.append((i, x, size))
                except VQFlowError as e:
                    results[i].error = str(e)
            if not part:
                continue
            scores, maps, concepts = self.run(np.stack([x for _, x, _ in part]))
            for (i, _, (w, h)), score, amap, concept in zip(part, scores, maps, concepts):
                r = results[i]
                r.score, r.concept = float(score), int(concept)
                r.threshold, r.verdict = self.calibration.verdict(r.score, r.concept, threshold)
                r.anomaly_map = resize_map(amap, w, h)
        return results
