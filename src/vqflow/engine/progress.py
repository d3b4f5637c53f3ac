"""Progress (tqdm bars with rate and ETA on a terminal; a plain line every few seconds in a
log) and status lines, all silenced by --quiet but for warnings."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 10.0  # seconds between progress lines when stderr is not a terminal


class LineProgress:
    """tqdm's interface as used here (update, set_postfix, close, context manager), writing
    one line every `interval` seconds and one at the end: readable in a log file, where a
    bar would be thousands of carriage-return frames."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float = LOG_INTERVAL) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n:
            self._line(time.monotonic())
        self.n = 0

    def _line(self, now: float) -> None:
        rate = self.n / max(now - self.start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} ({rate:.2f} {self.unit}/s{extra})", file=sys.stderr, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", quiet: bool = False) -> tqdm | LineProgress:
    """A progress bar on stderr (a line every few seconds when stderr is not a terminal);
    disabled when quiet."""
    if not quiet and not sys.stderr.isatty():
        return LineProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False, file=sys.stderr)


def say(message: str, quiet: bool = False) -> None:
    """One status line on stderr (not written when quiet)."""
    if not quiet:
        tqdm.write(message, file=sys.stderr)


def warn(message: str) -> None:
    """One 'warning: ...' line on stderr, printed even when quiet, without breaking a bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)
