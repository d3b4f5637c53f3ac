"""Build the pieces of a run from its config, and load a trained run from its folder."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqflow.backbones import create_backbone
from vqflow.calibration import Calibration
from vqflow.config import Config, from_dict
from vqflow.engine.checkpoint import load_checkpoint
from vqflow.errors import VQFlowError
from vqflow.model.detector import Detector
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
    """Images per backbone pass: 4 on a CPU, where larger batches are no faster per image and
    hold more memory (benchmarks/results/backbone.json, predict.json), else the training batch size."""
    return min(4, cfg.train.batch_size) if device.type == "cpu" else cfg.train.batch_size


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_backbone(cfg: Config, device: torch.device) -> torch.nn.Module:
    return create_backbone(cfg.model.backbone, weights=cfg.model.backbone_weights).to(device)


def build_head(cfg: Config, channels: tuple[int, int, int, int]) -> VQFlow:
    """The VQ-Flow head of `cfg.model` for backbone stages of `channels` (config -> plain arguments)."""
    m = cfg.model
    return VQFlow(
        tuple(channels), global_dim=m.global_dim, pos_dim=m.pos_dim, num_concepts=m.num_concepts,
        num_patterns=m.num_patterns, flow_blocks=tuple(m.flow_blocks), subnet_hidden=m.subnet_hidden,
        fusion_hidden=m.fusion_hidden, clamp=m.clamp, quantize=m.quantize, concept_patterns=m.concept_patterns,
        latent=m.latent, latent_logdet=m.latent_logdet, vq_init=m.vq_init, vq_decay=m.vq_decay,
    )  # fmt: skip


def build_detector(
    cfg: Config, backbone: torch.nn.Module, head: VQFlow, calibration: Calibration | None = None
) -> Detector:
    """The inference module of `cfg.score` over a backbone and a head."""
    s = cfg.score
    return Detector(
        backbone,
        head,
        image_map=s.image_map,
        pixel_map=s.pixel_map,
        topk=s.topk,
        blur_sigma=s.blur_sigma,
        normalization=s.normalization,
        calibration=calibration,
    )


@dataclass
class TrainedRun:
    """A run folder's config and its calibrated detector, ready to score images."""

    folder: Path
    cfg: Config
    detector: Detector
    payload: dict
    device: torch.device

    @property
    def calibration(self) -> Calibration:
        return self.detector.calibration


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
    calibration = Calibration.from_dict(payload.get("calibration"), f"the calibration in {folder}")
    if not calibration.ready and which == "auto":
        raise VQFlowError(
            f"run {folder} has no calibration (fit did not finish); continue it with "
            f"'vqflow fit --out {folder} --resume'"
        )
    detector = build_detector(cfg, backbone, head, calibration).to(dev).eval()
    return TrainedRun(folder, cfg, detector, payload, dev)
