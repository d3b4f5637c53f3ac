"""Progress bars (tqdm, with rate and ETA) and status lines, both silenced by --quiet."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", quiet: bool = False) -> tqdm:
    """A progress bar on stderr; disabled when quiet."""
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False, file=sys.stderr)


def say(message: str, quiet: bool = False) -> None:
    """One status line on stderr (not written when quiet)."""
    if not quiet:
        tqdm.write(message, file=sys.stderr)


def warn(message: str) -> None:
    """One 'warning: ...' line on stderr, printed even when quiet, without breaking a bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
