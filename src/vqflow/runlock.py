"""One writer per run folder: an OS lock on FOLDER/.lock while fit, test or predict writes there.

A second writer is refused at once, with the holder's pid and command line. The lock is the
operating system's (flock; msvcrt on Windows), so it ends with its process: a killed process
never leaves a stale lock, only a harmless .lock file the next writer takes over.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vqflow.errors import VQFlowError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
WINDOWS_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range: one far past the holder text, which stays readable


@contextmanager
def hold_run_folder(folder: str | os.PathLike, command: str, advice: str, create: bool = True) -> Iterator[None]:
    """Hold FOLDER/.lock for the block; VQFlowError naming the holder and `advice` when another
    process holds it. With `create`, make the folder (and remove it again if it is left empty);
    without, a missing folder is not locked (the caller reports it)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VQFlowError(f"{folder} is a file; choose a folder")
    if not create and not folder.is_dir():
        yield
        return
    created = not folder.exists()
    fd = _acquire(folder, command, advice)
    try:
        yield
    finally:
        _release(folder, fd, created)


def _acquire(folder: Path, command: str, advice: str) -> int:
    """Open and lock FOLDER/.lock and write this process's pid and command line into it."""
    path = folder / LOCK_NAME
    for _ in range(50):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # a holder that had created the folder just removed it: again
            continue
        except OSError as e:
            raise VQFlowError(f"cannot write into {folder} ({e.strerror}); choose a folder you can write to") from None
        locked = _try_lock(fd)
        if locked is False:
            os.close(fd)
            raise VQFlowError(f"{folder} is in use by another process ({_holder(path)}); {advice}")
        if locked is None:
            from vqflow.engine.progress import warn

            warn(f"cannot lock {folder} on this system; a second process writing into it would not be refused")
        elif not _same_file(fd, path):  # the holder removed this file as we opened it: take the new one
            os.close(fd)
            continue
        _write_holder(fd, command)
        return fd
    raise VQFlowError(f"could not lock {path}: other processes keep replacing it; try again")


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: no lock on this system or file system."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # a file system without flock (some network mounts)
            return None
    try:
        import msvcrt
    except ImportError:
        return None
    os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _release(folder: Path, fd: int, created: bool) -> None:
    """Remove the lock file and unlock; remove the folder too when this lock made it and it stayed empty."""
    path = folder / LOCK_NAME
    if fcntl is not None:
        _unlink(path)  # while still locked: a process waiting on this file sees it replaced (_same_file)
        os.close(fd)
    else:
        os.close(fd)  # Windows removes no open file
        _unlink(path)
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: the command wrote into it


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _write_holder(fd: int, command: str) -> None:
    """Replace the lock file's text with who holds it (read by a refused second writer)."""
    text = json.dumps({"pid": os.getpid(), "command": command, "argv": command_line()}) + "\n"
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())  # json.dumps escapes any undecodable character


def _holder(path: Path) -> str:
    """'pid N, vqflow fit: <command line>' from a held lock file, as far as it can be read."""
    try:
        info = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):  # written by the holder a moment after it took the lock
        return "pid unknown"
    return f"pid {info.get('pid', '?')}, vqflow {info.get('command', '?')}: {info.get('argv', '?')}"


def command_line(limit: int = 200) -> str:
    """This process's command line on one line, cut to `limit` characters ('vqflow fit --out runs/a ...')."""
    argv = list(sys.argv) or ["python"]
    prog = Path(argv[0]).name or "python"
    if prog == "__main__.py":
        prog = f"python -m {Path(argv[0]).parent.name}"
    text = " ".join([prog, *(shlex.quote(a) for a in argv[1:])])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
