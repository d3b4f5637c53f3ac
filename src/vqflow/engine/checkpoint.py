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
from vqflow.atomic import atomic_path, write_error
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
    """Write `payload` (which must hold 'model', a state dict) to a temp file, then rename.

    A failed write (disk full, read-only file system...) is a VQFlowError naming the file and
    the reason; the previous checkpoint at `path` stays as it was.
    """
    path = Path(path)
    payload = {**payload, "format": FORMAT, "version": __version__}
    payload["checksum_scope"] = "payload"
    payload["checksum"] = payload_checksum(payload)
    existed = path.exists()
    with atomic_path(path, "checkpoint") as tmp, open(tmp, "wb") as f:
        # Through a Python file, not a path, so that a failed write's OSError (with its errno) is
        # seen: torch's own writer reports only "file write failed" or "unexpected pos".
        recorder = _WriteRecorder(f)
        try:
            torch.save(payload, recorder)
        except RuntimeError as e:
            if recorder.error is not None:
                raise recorder.error from e  # atomic_path names the file and the reason
            if not _is_write_failure(e):
                raise
            reason = "torch's writer failed, most likely no space left on device"
            raise write_error(path, "checkpoint", reason, "free disk space, then run again", existed) from e
        f.flush()
        os.fsync(f.fileno())  # a late error (quota, network disk) surfaces before the rename, not after
    return path


class _WriteRecorder:
    """A binary file's write() for torch.save, remembering the first OSError it raised."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _is_write_failure(exc: RuntimeError) -> bool:
    """Whether a RuntimeError is torch's zip writer failing to write (a full disk, mostly)."""
    text = str(exc)
    return "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text


# What every checkpoint of 'vqflow fit' holds, and what fit --resume needs besides.
REQUIRED_KEYS = ("config", "feature_channels")
RESUME_KEYS = ("config", "feature_channels", "epoch", "step", "optimizer", "rng", "vq_rng", "history", "best")
_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "feature_channels": (list, tuple),
    "epoch": int,
    "step": int,
    "optimizer": dict,
    "rng": torch.Tensor,
    "vq_rng": dict,
    "history": list,
    "best": dict,
}


def load_checkpoint(path: str | os.PathLike, require: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load and verify a checkpoint; a missing, corrupt or foreign file, or one without the
    `require`d entries, gets a clear error."""
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
    require_keys(payload, path, require)
    return payload


def require_keys(payload: dict[str, Any], path: str | os.PathLike, keys: tuple[str, ...]) -> None:
    """Raise a one-line VQFlowError naming the first of `keys` the checkpoint lacks (or holds in
    the wrong form), instead of a KeyError or TypeError wherever it is first used."""
    for key in keys:
        if key not in payload:
            problem = "lacks"
        elif not isinstance(payload[key], _KEY_TYPES.get(key, object)):
            problem = f"holds a {type(payload[key]).__name__} as"
        else:
            continue
        raise VQFlowError(
            f"checkpoint {path} {problem} '{key}': it was not written by this version of 'vqflow fit' "
            "(or was edited); use a checkpoint from this version, or train again"
        )
