"""Checkpoints: atomic writes, a checksum, and loading with weights_only=True (no code runs)."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqflow import __version__
from vqflow.atomic import atomic_path
from vqflow.errors import VQFlowError

FORMAT = "vqflow-checkpoint-v1"


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the model's tensors (names, dtypes, shapes, bytes), in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` (which must hold 'model', a state dict) to a temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format": FORMAT, "version": __version__}
    payload["checksum"] = state_checksum(payload["model"])
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a checkpoint; a missing, corrupt or foreign file gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise VQFlowError(f"checkpoint {path} does not exist; train first with 'vqflow fit'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise VQFlowError(
            f"checkpoint {path} is corrupt or not a vqflow checkpoint ({first}); use another checkpoint or train again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VQFlowError(f"{path} is not a vqflow checkpoint (format {FORMAT} expected)")
    if state_checksum(payload["model"]) != payload.get("checksum"):
        raise VQFlowError(f"checkpoint {path} fails its checksum (damaged file); use another checkpoint")
    return payload
