"""The Python API, mirroring the command line: fit, evaluate, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqflow import config as _config
from vqflow.config import Config
from vqflow.engine.predict import predict  # noqa: F401 - the API's predict is the engine's (imports no torch)


def make_config(cfg: Config | dict | str | Path | None = None, **overrides: Any) -> Config:
    """A Config from a Config, a dict, a YAML path or a preset name, with dotted-key overrides
    given as keyword arguments with '__' for '.', e.g. train__epochs=5."""
    if isinstance(cfg, Config):
        base = _config.from_dict(cfg.to_dict())
    elif isinstance(cfg, dict):
        base = _config.from_dict(cfg)
    elif isinstance(cfg, (str, Path)) and str(cfg).endswith((".yaml", ".yml")):
        base = _config.from_dict(_config.load_yaml(cfg))
    else:
        base = _config.preset(str(cfg) if cfg else "fast")
    for key, value in overrides.items():
        _config.set_key(base, key.replace("__", "."), value)
    return base


def fit(
    cfg: Config | dict | str | Path | None = None,
    out: str | Path = "runs/run",
    resume: bool = False,
    quiet: bool = False,
    **overrides: Any,
) -> Path:
    """Train one model on the normal images of every class in cfg.data.specs; returns the run folder."""
    from vqflow.engine.fit import fit as _fit

    return _fit(make_config(cfg, **overrides), out, resume=resume, quiet=quiet)


def evaluate(run: str | Path, device: str = "auto", quiet: bool = False, report: bool = True) -> dict:
    """Per-class metrics of a run on its test set (also written into the run folder)."""
    from vqflow.engine.evaluate import evaluate as _evaluate

    return _evaluate(run, device=device, quiet=quiet, report=report)


def load_detector(run: str | Path, device: str = "auto"):
    """The run's calibrated Detector (an nn.Module: images -> Prediction), in eval mode."""
    from vqflow.engine.build import load_run

    return load_run(run, device).detector


def export(run: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write the run's detector as ONNX (+ JSON sidecar); returns both paths."""
    from vqflow.export.onnx import export_onnx

    return export_onnx(run, out)
