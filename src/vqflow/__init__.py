"""vqflow: unified (multi-class) unsupervised anomaly detection with VQ-Flow.

The API functions load lazily, so that importing a torch-free part of vqflow (the ONNX
inferencer, `vqflow.export.inferencer`) never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "export", "fit", "load_detector", "make_config", "predict"]

if TYPE_CHECKING:  # pragma: no cover
    from vqflow.api import evaluate, export, fit, load_detector, make_config, predict


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "export", "fit", "load_detector", "make_config", "predict"):
        from vqflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'vqflow' has no attribute {name!r}")
