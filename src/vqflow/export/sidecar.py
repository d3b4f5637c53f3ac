"""The JSON sidecar of an exported model: everything a runtime needs beside the graph
(input size and normalisation, calibration, provenance). Torch-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqflow.calibration import Calibration
from vqflow.errors import VQFlowError
from vqflow.imageio import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "vqflow-onnx-v1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "anomaly_map", "concept")


@dataclass
class Sidecar:
    """What travels with `model.onnx` as `model.json`."""

    input_size: tuple[int, int]  # (H, W) of the graph's input
    calibration: Calibration
    vqflow_version: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    run: dict[str, Any] = field(default_factory=dict)  # preset, backbone, epoch, score settings

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "vqflow_version": self.vqflow_version,
                "input": {
                    "name": INPUT_NAME,
                    "size_hw": list(self.input_size),
                    "layout": "NCHW, RGB, float32",
                    "resize": "Lanczos to size_hw, no crop",
                    "scale": "pixel / 255",
                    "mean": list(self.mean),
                    "std": list(self.std),
                },
                "outputs": {
                    "score": "(B,) image anomaly score",
                    "anomaly_map": "(B, H, W) pixel anomaly map at the input size",
                    "concept": "(B,) learned concept (CPC code)",
                },
                "calibration": self.calibration.to_dict(),  # concept_classes: concept -> majority class
                "run": self.run,
            },
            indent=2,
        )

    @staticmethod
    def read(path: str | Path) -> Sidecar:
        path = Path(path)
        if not path.is_file():
            raise VQFlowError(f"sidecar {path} does not exist; it is written beside the .onnx file by 'vqflow export'")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VQFlowError(f"sidecar {path} is not valid JSON ({e}); export the run again") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise VQFlowError(f"{path} is not a vqflow export sidecar (format {FORMAT} expected)")
        try:
            inp = d["input"]
            return Sidecar(
                input_size=(int(inp["size_hw"][0]), int(inp["size_hw"][1])),
                calibration=Calibration.from_dict(d["calibration"], f"the calibration in {path}"),
                vqflow_version=str(d.get("vqflow_version", "")),
                mean=tuple(float(v) for v in inp["mean"]),
                std=tuple(float(v) for v in inp["std"]),
                run=dict(d.get("run", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise VQFlowError(f"sidecar {path} lacks or damages {e}; export the run again") from None


def sidecar_path(onnx_path: str | Path) -> Path:
    """model.onnx -> model.json."""
    return Path(onnx_path).with_suffix(".json")
