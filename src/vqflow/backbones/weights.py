"""Read a local state-dict file and load it strictly, with one-line errors naming the file.

This is how any backbone runs offline: the user saves `model.state_dict()` somewhere and
passes the path (`--backbone-weights FILE`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from vqflow.errors import VQFlowError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def _one_line(text: object, limit: int = 160) -> str:
    """Squash an exception text into one short line for an error message."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load `path` with torch.load(weights_only=True) and return a flat name->tensor dict.

    Accepts a plain state dict or one wrapped under 'state_dict'/'model'/'model_state_dict'
    and strips a DataParallel 'module.' prefix. Raises VQFlowError naming the file otherwise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VQFlowError(
            f"backbone weights file '{path}' does not exist: pass a file written with "
            "torch.save(model.state_dict(), FILE)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated, pickled code, not a torch file...
        raise VQFlowError(
            f"backbone weights file '{path}' is not a readable torch state dict "
            f"({_one_line(exc)}): save one with torch.save(model.state_dict(), FILE)"
        ) from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise VQFlowError(
            f"backbone weights file '{path}' does not hold a state dict of tensors: "
            "save one with torch.save(model.state_dict(), FILE)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str, arch: str) -> None:
    """Load `state` into `module` with every key and shape matching, else VQFlowError."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(
                f"{len(wrong_shape)} keys of the wrong shape (e.g. {k}: file "
                f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            )
        raise VQFlowError(
            f"backbone weights file '{path}' does not fit backbone '{arch}': "
            + ", ".join(parts)
            + "; pass the state dict of that same architecture"
        )
    module.load_state_dict(state, strict=True)
