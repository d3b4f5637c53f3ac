"""Build the pieces of a run from its config, and load a trained run from its folder."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqflow.backbones import create_backbone
from vqflow.config import Config, from_dict
from vqflow.engine.checkpoint import load_checkpoint
from vqflow.errors import VQFlowError
from vqflow.model.detector import AnomalyDetector
from vqflow.model.scores import ScoreStats
from vqflow.model.vqflow import VQFlow


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VQFlowError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise VQFlowError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None


def inference_batch_size(cfg: Config, device: torch.device) -> int:
    """Images per backbone pass: 4 on a CPU, where larger batches are slower per image
    (Lite0 at 256 px: ~60 ms/img at 4, ~105 at 16), else the training batch size."""
    return min(4, cfg.train.batch_size) if device.type == "cpu" else cfg.train.batch_size


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_backbone(cfg: Config, device: torch.device) -> torch.nn.Module:
    return create_backbone(cfg.model.backbone, weights=cfg.model.backbone_weights).to(device)


def build_head(cfg: Config, channels: tuple[int, int, int, int]) -> VQFlow:
    return VQFlow(cfg.model, channels)


@dataclass
class TrainedRun:
    """A run folder's config, detector and calibration, ready to score images."""

    folder: Path
    cfg: Config
    detector: AnomalyDetector
    payload: dict
    device: torch.device

    @property
    def thresholds(self) -> dict:
        return self.payload.get("calibration", {}).get("thresholds", {})


def checkpoint_path(run: Path, which: str = "auto") -> Path:
    """checkpoints/final.pt (the model chosen at fit time) unless `which` names another."""
    ckpts = run / "checkpoints"
    if which == "auto":
        return ckpts / "final.pt" if (ckpts / "final.pt").exists() else ckpts / "last.pt"
    return ckpts / f"{which}.pt"


def load_run(run: str | Path, device: str = "auto", which: str = "auto") -> TrainedRun:
    """Load a trained run (config from the checkpoint itself, so the folder may move)."""
    folder = Path(run)
    if not folder.is_dir():
        raise VQFlowError(f"run folder {folder} does not exist; pass the --out folder of 'vqflow fit'")
    payload = load_checkpoint(checkpoint_path(folder, which))
    cfg = from_dict(payload["config"], f" in {folder}")
    dev = resolve_device(device)
    backbone = build_backbone(cfg, dev)
    head = build_head(cfg, tuple(payload["feature_channels"]))
    head.load_state_dict(payload["model"])
    head.to(dev).eval()
    stats_dict = payload.get("calibration", {}).get("stats")
    stats = ScoreStats(**stats_dict) if stats_dict else None
    if stats is None and cfg.score.normalization == "train":
        raise VQFlowError(
            f"run {folder} has no training statistics (fit did not finish); continue it with "
            f"'vqflow fit --out {folder} --resume'"
        )
    detector = AnomalyDetector(backbone, head, cfg.score, stats).to(dev).eval()
    return TrainedRun(folder, cfg, detector, payload, dev)
