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
from vqflow.errors import VQFlowError, first_line

FORMAT = "vqflow-checkpoint-v1"


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the model's tensors only (the checksum of vqflow 0.1.0 checkpoints)."""
    h = hashlib.sha256()
    for key in sorted(state):
        _update_tensor(h, key, state[key])
    return h.hexdigest()


def payload_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 over everything in the payload but the checksum itself: config, calibration,
    weights, optimizer and random states, log history (keys sorted, tensors by dtype, shape
    and bytes), so that any flipped bit is caught, not only one in the weights."""
    h = hashlib.sha256()
    _update(h, "", {k: v for k, v in payload.items() if k not in ("checksum", "checksum_scope")})
    return h.hexdigest()


def _update_tensor(h: Any, key: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _update(h: Any, key: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        _update_tensor(h, key, value)
    elif isinstance(value, dict):
        h.update(f"{key}|dict{len(value)}|".encode())
        for k in sorted(value, key=repr):
            _update(h, f"{key}/{k!r}", value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{key}|{type(value).__name__}{len(value)}|".encode())
        for i, v in enumerate(value):
            _update(h, f"{key}/{i}", v)
    else:  # str, int, float, bool, None
        h.update(f"{key}|{type(value).__name__}|{value!r}|".encode("utf-8", "surrogateescape"))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` (which must hold 'model', a state dict) to a temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "format": FORMAT, "version": __version__}
    payload["checksum_scope"] = "payload"
    payload["checksum"] = payload_checksum(payload)
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
        if "weights only" in str(e).lower():  # objects other than tensors and plain data: never loaded
            raise VQFlowError(
                f"{path} is not a vqflow checkpoint: it holds Python objects that vqflow refuses to load "
                "(only tensors and plain data are read); use a checkpoint written by 'vqflow fit'"
            ) from None
        raise VQFlowError(
            f"checkpoint {path} is corrupt or not a vqflow checkpoint ({first_line(e)}); "
            "use another checkpoint or train again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VQFlowError(f"{path} is not a vqflow checkpoint (format {FORMAT} expected)")
    if not isinstance(payload.get("model"), dict):
        raise VQFlowError(
            f"{path} is not a vqflow checkpoint (no model weights); use a checkpoint written by 'vqflow fit'"
        )
    full = payload.get("checksum_scope") == "payload"
    expected = payload_checksum(payload) if full else state_checksum(payload["model"])
    if expected != payload.get("checksum"):
        raise VQFlowError(f"checkpoint {path} fails its checksum (damaged file); use another checkpoint")
    return payload
