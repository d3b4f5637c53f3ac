"""Build the pieces of a run from its config, and load a trained run from its folder."""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqflow.backbones import create_backbone
from vqflow.calibration import Calibration
from vqflow.config import Config, from_dict
from vqflow.engine.checkpoint import load_checkpoint
from vqflow.errors import VQFlowError, first_line
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
    """Seed Python, numpy and torch (every device). On a CPU that makes a run repeat exactly;
    on CUDA see `use_deterministic`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic(on: bool) -> None:
    """train.deterministic: deterministic algorithms only (cuDNN without autotuning, cuBLAS with a
    fixed workspace); an op with no deterministic form then raises instead of varying. The model
    itself avoids the usual culprits (bilinear resizes are matrix products, see layers.resize_bilinear)."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


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
        vq_dead_threshold=m.vq_dead_threshold, fusion=m.fusion,
    )  # fmt: skip


# train.precision -> the backbone's autocast type on CUDA (None: fp32). fp16 by default: the
# backbone is frozen and runs without gradients, so only its forward range matters, and fp16
# keeps 3 more mantissa bits than bf16. A CPU always runs fp32: its half-precision
# convolutions are slower than fp32 on most CPUs.
PRECISIONS: dict[str, torch.dtype | None] = {
    "auto": torch.float16,
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def backbone_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The backbone's autocast type for train.precision on `device`; None: run it in fp32."""
    if precision not in PRECISIONS:
        raise VQFlowError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision] if device.type == "cuda" else None


def build_detector(
    cfg: Config, backbone: torch.nn.Module, head: VQFlow, calibration: Calibration | None = None
) -> Detector:
    """The inference module of `cfg.score` over a backbone and a head (on the backbone's device)."""
    s = cfg.score
    image_score = s.image_score
    if calibration is not None and calibration.ready and not calibration.score_center:
        image_score = "map"  # calibrated before score.image_score existed: its thresholds are on the map's score
    return Detector(
        backbone,
        head,
        image_map=s.image_map,
        pixel_map=s.pixel_map,
        topk=s.topk,
        blur_sigma=s.blur_sigma,
        normalization=s.normalization,
        image_score=image_score,
        knn_k=s.knn_k,
        local_neighbours=s.local_neighbours,
        calibration=calibration,
        autocast=backbone_autocast(cfg.train.precision, next(backbone.parameters(), torch.empty(0)).device),
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
    path = checkpoint_path(folder, which)
    payload = load_checkpoint(path)
    cfg = from_dict(payload["config"], f" in {path}")
    channels = feature_channels(payload, path)
    dev = resolve_device(device)
    backbone = build_backbone(cfg, dev)
    head = build_head(cfg, channels)
    load_weights(head, payload["model"], cfg, path)
    calibration = Calibration.from_dict(payload.get("calibration"), f"the calibration in {folder}")
    if not calibration.ready and which == "auto":
        raise VQFlowError(
            f"run {folder} has no calibration (fit did not finish); continue it with "
            f"'vqflow fit --out {folder} --resume'"
        )
    detector = build_detector(cfg, backbone, head, calibration)
    if "knn_bank" in payload:
        detector.knn_bank = payload["knn_bank"].float()
    if "knn_local" in payload:  # absent in runs calibrated before score.local_neighbours: absolute local part
        detector.knn_local = payload["knn_local"].float()
    detector = detector.to(dev).eval()
    return TrainedRun(folder, cfg, detector, payload, dev)


# Model keys that set tensor shapes: the candidates when saved weights do not fit their config.
_SHAPE_KEYS = ("subnet_hidden", "fusion_hidden", "global_dim", "pos_dim", "num_concepts", "num_patterns")
_RETRAIN = (
    "the file is not from this version of vqflow or its config was edited; use the checkpoint "
    "with the config it was trained with, or train again"
)


def feature_channels(payload: dict, path: Path) -> tuple[int, int, int, int]:
    """The checkpoint's backbone stage widths, checked: four positive integers."""
    channels = payload["feature_channels"]
    if len(channels) != 4 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise VQFlowError(f"checkpoint {path} holds feature_channels {list(channels)!r}, not 4 widths; {_RETRAIN}")
    return tuple(channels)  # type: ignore[return-value]


def load_weights(head: VQFlow, state: dict, cfg: Config, path: Path) -> None:
    """Load saved weights into the head built from the saved config; when they do not fit,
    say in one line which config key (or tensor) disagrees, instead of torch's 25-line list."""
    expected = head.state_dict()
    problem = state_mismatch(expected, state)
    if problem is None:
        try:
            head.load_state_dict(state)
            return
        except (RuntimeError, ValueError, TypeError) as e:  # e.g. a tensor of an uncastable dtype
            problem = first_line(e, 150)
    key = guess_config_key(cfg, head.feature_channels, expected, state)
    raise VQFlowError(f"checkpoint {path}: the weights do not match the saved config ({key or problem}); {_RETRAIN}")


def state_mismatch(expected: dict[str, torch.Tensor], saved: dict) -> str | None:
    """The first difference between a model's state dict and saved weights, in words
    (a missing or extra tensor, or one of another shape), with how many more; None if they fit."""
    problems = []
    for key, want in expected.items():
        got = saved.get(key)
        if key not in saved:
            problems.append(f"'{key}' is missing from the weights")
        elif not isinstance(got, torch.Tensor):
            problems.append(f"'{key}' is a {type(got).__name__}, not a tensor")
        elif got.shape != want.shape:
            problems.append(f"'{key}' is {_shape(got)} in the file but {_shape(want)} for the config")
    problems += [f"the weights hold an unexpected '{key}'" for key in saved if key not in expected]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
    return problems[0] + more


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "a scalar"


def guess_config_key(
    cfg: Config, channels: tuple[int, ...], expected: dict[str, torch.Tensor], saved: dict
) -> str | None:
    """'model.KEY is A in the saved config but the weights are for B' when changing one
    shape-setting model key to B makes every saved tensor fit (`expected`: the state dict for
    `cfg`); None when no single key does."""
    candidates = [
        (key, got)
        for key in _SHAPE_KEYS
        for want, got in sorted(_differing_sizes(expected, saved))
        if want == getattr(cfg.model, key)
    ]
    blocks = _saved_flow_blocks(saved)
    if blocks and blocks != list(cfg.model.flow_blocks):
        candidates.append(("flow_blocks", blocks))
    for key, got in candidates:
        trial = copy.deepcopy(cfg)
        setattr(trial.model, key, got)
        try:
            fits = state_mismatch(build_head(trial, tuple(channels)).state_dict(), saved) is None
        except Exception:  # noqa: BLE001 - an impossible trial value is simply not the answer
            fits = False
        if fits:
            return f"model.{key} is {getattr(cfg.model, key)} in the saved config but the weights are for {got}"
    return None


def _saved_flow_blocks(saved: dict) -> list[int]:
    """Flow blocks per level that saved weights hold (from their 'flows.L.blocks.B.' names)."""
    found: dict[int, int] = {}
    for key in saved:
        parts = str(key).split(".")
        if (
            len(parts) > 3
            and parts[0] == "flows"
            and parts[2] == "blocks"
            and parts[1].isdigit()
            and parts[3].isdigit()
        ):
            level, block = int(parts[1]), int(parts[3])
            found[level] = max(found.get(level, 0), block + 1)
    return [found.get(level, 0) for level in range(max(found) + 1)] if found else []


def _differing_sizes(expected: dict[str, torch.Tensor], saved: dict) -> set[tuple[int, int]]:
    """(size for the config, size in the file) of each differing dimension of same-rank tensors."""
    pairs = set()
    for key, want in expected.items():
        got = saved.get(key)
        if isinstance(got, torch.Tensor) and got.dim() == want.dim() and got.shape != want.shape:
            pairs.update((a, b) for a, b in zip(want.shape, got.shape) if a != b)
    return pairs
