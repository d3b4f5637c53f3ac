"""Atomic file writes: write beside the target, then rename, so a crash never leaves half a file.

A write that fails (disk full, read-only file system, no permission, a file where a folder
should be) becomes a one-line VQFlowError naming the file and the reason; the temporary is
removed and the previous version of the file, if any, is left as it was.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from vqflow.errors import VQFlowError

# errno -> (the reason in words, what to do)
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free disk space or write elsewhere, then run again"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere, then run again"),
    errno.EFBIG: ("file too large for the file system", "write to another file system"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you may write to, or fix its permissions"),
    errno.EPERM: ("permission denied (operation not permitted)", "choose a folder you may write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path below a folder"),
    errno.EEXIST: ("a file is in the way of a folder on the path", "choose another path or remove the file"),
    errno.EISDIR: ("it is a folder", "choose a file name, not a folder"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ENOENT: ("no such folder, or one that cannot hold files", "choose an existing folder on a disk"),
    errno.EIO: ("input/output error", "check the disk, or write elsewhere"),
}


def write_reason(exc: OSError) -> tuple[str, str] | None:
    """(reason in words, what to do) for an OSError that means a file could not be written;
    None for other errors (which are not about writing and stay as they are)."""
    return _REASONS.get(exc.errno) if exc.errno is not None else None


def write_error(path: Path, what: str, reason: str, advice: str, existed: bool) -> VQFlowError:
    """The one-line error for a file that could not be written, saying what was kept."""
    kept = f"the previous {path.name} is intact" if existed else "no partial file was left"
    return VQFlowError(f"cannot write {what} {path}: {reason}; {advice} ({kept})")


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    An OSError that means the file cannot be written (creating the folder, the temporary, or
    the block's own writes to it, or the rename) is raised as a VQFlowError naming `path` as
    a `what` ("checkpoint", "file"...); the temporary never outlives the block.
    """
    path = Path(path)
    existed = False
    tmp: str | None = None
    try:
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; follow the umask like open() does
        yield Path(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        found = write_reason(e)
        if found is None or not _about(e, path):
            raise
        raise write_error(path, what, *found, existed=existed) from e
    finally:
        _remove(tmp)


def _about(exc: OSError, path: Path) -> bool:
    """Whether an OSError concerns the file being written (its path, folders or temporary);
    errors of a bare write() carry no file name."""
    if exc.filename is None:
        return True
    name = Path(os.fsdecode(exc.filename))
    return name in (path, *path.parents) or name.parent == path.parent  # the target, its folders, a temporary


def _remove(tmp: str | None) -> None:
    """Delete a temporary, quietly: a failed clean-up must not hide the error that caused it."""
    if tmp is not None:
        with suppress(OSError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    """Write text to `path` atomically (UTF-8)."""
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # undecodable file names round-trip
