"""Where vqflow keeps what it can rebuild: the demo set and cached ONNX exports."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$VQFLOW_CACHE, or ~/.cache/vqflow."""
    env = os.environ.get("VQFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vqflow"
