"""The report's images: gathered in memory, then embedded as data: URIs or written beside the html.

Sections refer to an image by a placeholder (`Assets.src`); `Assets.resolve` swaps every
placeholder for its data: URI (one self-contained file) or, past a size limit, for a relative
path into report_files/ after writing the files there.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from vqflow.atomic import atomic_path
from vqflow.errors import VQFlowError

FILES_DIR = "report_files"
EMBED_LIMIT = 30 * 1024 * 1024  # bytes of images (base64) above which they go to report_files/
JPEG_QUALITY = 90
_TOKEN = re.compile(r"<@asset:([A-Za-z0-9_.-]+)@>")  # "<" cannot occur in escaped text
_MIME = {"png": "image/png", "jpg": "image/jpeg"}


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes (for line art: exact pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(_checked(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as JPEG bytes (for photo tiles: ~5x smaller than PNG)."""
    buffer = io.BytesIO()
    Image.fromarray(_checked(array)).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _checked(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise VQFlowError(f"report image: need (H, W) or (H, W, 3) uint8, got {array.shape} {array.dtype}")
    return array


class Assets:
    """Named images of one report (insertion order kept, so output is deterministic)."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def src(self, name: str, content: bytes) -> str:
        """Keep `content` as `name` (ending .png or .jpg); return the placeholder for an src attribute."""
        if not _TOKEN.fullmatch(f"<@asset:{name}@>") or name.rsplit(".", 1)[-1] not in _MIME:
            raise VQFlowError(f"report asset name {name!r}: use letters, digits, _ . - and end in .png or .jpg")
        self.items[name] = content
        return f"<@asset:{name}@>"

    def embedded_size(self) -> int:
        """Bytes the images take as base64 data: URIs."""
        return sum(4 * -(-len(b) // 3) for b in self.items.values())

    def resolve(self, page: str, out_dir: Path, embed: bool) -> str:
        """The page with every placeholder replaced: a data: URI if `embed`, else a relative
        path into out_dir/report_files/ (the files are written there first)."""
        if embed:
            uris = {name: _data_uri(name, content) for name, content in self.items.items()}
            return _TOKEN.sub(lambda m: uris[m.group(1)], page)
        for name, content in self.items.items():
            with atomic_path(out_dir / FILES_DIR / name, "report image") as tmp:
                tmp.write_bytes(content)
        return _TOKEN.sub(lambda m: f"{FILES_DIR}/{m.group(1)}", page)


def _data_uri(name: str, content: bytes) -> str:
    mime = _MIME[name.rsplit(".", 1)[-1]]
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"
