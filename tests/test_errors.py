"""Failures the user can fix end in one `error: ...` line naming the file, exit 2: a full disk,
a read-only or unusable --out, a damaged image read by a DataLoader worker, a checkpoint whose
weights do not fit its config."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import vqflow.atomic as atomic_mod
import vqflow.cli as cli
from tiny_run import tiny_args
from vqflow.cli import main
from vqflow.engine.checkpoint import load_checkpoint, save_checkpoint

# What torch's own zip writer raises when the disk fills up under it.
TORCH_DISK_FULL = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed"
)


def _one_error_line(capsys) -> str:
    """The single stderr line of a failed command (asserting it is one line)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and not err.startswith("error: unexpected"), err
    return err


def _temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp"))


@contextmanager
def _tmpfs(where: Path, *options: str):
    """A small tmpfs at `where` (root only, where mounting works), else skip the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount for a tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run (its final checkpoint), safe to damage or write into."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "config.yaml", out / "config.yaml")
    shutil.copy(tiny_run / "checkpoints" / "final.pt", out / "checkpoints" / "final.pt")
    return out


def _fit(data: Path, out: Path, *extra: str) -> int:
    return main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(2), *extra])


# ---- 10: disk full, read-only, unusable --out -------------------------------------------------------


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tiny_data, tmp_path, monkeypatch, capsys):
    """torch's writer fails on the second checkpoint (epoch 2): one line naming last.pt, epoch 1 kept."""
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError(TORCH_DISK_FULL)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    assert _fit(tiny_data, out) == 2
    err = _one_error_line(capsys)
    last = out / "checkpoints" / "last.pt"
    assert str(last) in err and "no space left on device" in err and "intact" in err
    monkeypatch.undo()
    assert load_checkpoint(last)["epoch"] == 1
    assert _temporaries(out) == []


def test_disk_full_on_a_real_small_file_system(tiny_data, tiny_run, tmp_path, capsys):
    """A tmpfs with room for one checkpoint only: the second one fails with ENOSPC, the first is kept."""
    room = (tiny_run / "checkpoints" / "last.pt").stat().st_size * 3 // 2
    with _tmpfs(tmp_path / "small", f"size={room}") as small:
        assert _fit(tiny_data, small / "run") == 2
        err = _one_error_line(capsys)
        last = small / "run" / "checkpoints" / "last.pt"
        assert str(last) in err and "no space left on device" in err and "intact" in err
        assert load_checkpoint(last)["epoch"] == 1
        assert _temporaries(small) == []


def _leftovers(run: Path) -> list[Path]:
    """Temporaries or staging folders that a failed `vqflow test` left in the run folder."""
    return [p for p in run.iterdir() if p.name.startswith(".")] + _temporaries(run)


def test_disk_full_while_writing_test_outputs(run_copy, monkeypatch, capsys):
    """ENOSPC writing the first metrics file: one line naming it; the previous metrics.json is untouched."""
    (run_copy / "metrics.json").write_text("previous")
    real_write = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.startswith(".metrics."):  # the temporary of metrics.json or metrics.csv
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write() names no file
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(["test", "--run", str(run_copy), "--quiet", "--no-report"]) == 2
    err = _one_error_line(capsys)
    assert str(run_copy) in err and "/metrics." in err and "no space left on device" in err
    assert (run_copy / "metrics.json").read_text() == "previous"
    assert _leftovers(run_copy) == []


def test_read_only_file_system_while_writing_test_outputs(run_copy, monkeypatch, capsys):
    """The rename into place fails with EROFS: one line naming the file, nothing left behind."""

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(src), os.fspath(dst))

    monkeypatch.setattr(atomic_mod.os, "replace", read_only)
    assert main(["test", "--run", str(run_copy), "--quiet", "--no-report"]) == 2
    err = _one_error_line(capsys)
    assert str(run_copy) in err and "/metrics." in err and "read-only file system" in err
    assert not (run_copy / "metrics.json").exists() and _leftovers(run_copy) == []


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_out_is_an_existing_file(command, tiny_data, tiny_run, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    image = tiny_data / "stripes" / "test" / "good" / "000.png"
    args = {
        "fit": ["fit", "--data", f"mvtec:{tiny_data}", "--out", str(target), *tiny_args(1)],
        "predict": ["predict", "--run", str(tiny_run), str(image), "--out", str(target), "--quiet"],
    }[command]
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert str(target) in err and "existing file" in err


@pytest.mark.parametrize("command", ["fit", "export"])
def test_out_below_a_file(command, tiny_data, tiny_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = {
        "fit": ["fit", "--data", f"mvtec:{tiny_data}", "--out", str(blocker / "run"), *tiny_args(1)],
        "export": ["export", "--run", str(tiny_run), "--out", str(blocker / "sub" / "model.onnx")],
    }[command]
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert str(blocker) in err and "not a folder" in err


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_out_under_proc(command, tiny_data, tiny_run, capsys):
    image = tiny_data / "stripes" / "test" / "good" / "000.png"
    args = {
        "fit": ["fit", "--data", f"mvtec:{tiny_data}", "--out", "/proc/vqflow-run", *tiny_args(1)],
        "predict": ["predict", "--run", str(tiny_run), str(image), "--out", "/proc/vqflow-preds", "--quiet"],
    }[command]
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert "/proc/vqflow-" in err and "virtual file system" in err


def test_out_in_an_unwritable_folder_is_refused_before_any_work(tiny_data, tmp_path, monkeypatch, capsys):
    """No file can be created in the --out folder (patched: EACCES, which root never meets):
    refused at once, before the data is even listed."""
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = tempfile.mkstemp

    def denied(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) in (locked, locked / "run"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(locked / ".probe"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(
        "vqflow.engine.fit.load_data", lambda *a, **k: pytest.fail("work started before --out was checked")
    )
    assert main(["fit", "--data", f"mvtec:{tiny_data}", "--out", str(locked / "run"), *tiny_args(1)]) == 2
    err = _one_error_line(capsys)
    assert str(locked / "run") in err and "permission denied" in err


def test_out_on_a_real_read_only_file_system(tiny_data, tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "ro", "size=64k") as ro:
        assert main(["fit", "--data", f"mvtec:{tiny_data}", "--out", str(ro / "run"), *tiny_args(1)]) == 2
        err = _one_error_line(capsys)
        assert str(ro / "run") in err and "read-only file system" in err


def test_an_os_error_naming_a_file_is_one_line(monkeypatch, capsys, tmp_path):
    """Last resort in main(): any OSError with a file name becomes one line naming it, exit 2."""

    def fails(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/some/where/file.bin")

    monkeypatch.setitem(cli.COMMANDS, "test", fails)
    assert main(["test", "--run", str(tmp_path)]) == 2
    err = _one_error_line(capsys)
    assert "/some/where/file.bin" in err and "permission denied" in err


# ---- 11: a damaged image read in a DataLoader worker -------------------------------------------------


def test_truncated_image_in_a_dataloader_worker_is_one_line(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    broken = data / "stripes" / "train" / "good" / "003.png"
    broken.write_bytes(broken.read_bytes()[:300])
    assert _fit(data, tmp_path / "run", "--set", "data.num_workers=1") == 2
    err = _one_error_line(capsys)
    assert str(broken) in err and "truncated" in err and "Traceback" not in err


# ---- 12: a checkpoint that does not fit its config ---------------------------------------------------


def _tamper(run: Path, change) -> Path:
    """Change the final checkpoint's payload and save it again with a valid checksum."""
    path = run / "checkpoints" / "final.pt"
    payload = load_checkpoint(path)
    change(payload)
    save_checkpoint(path, payload)
    return path


def test_weights_that_do_not_match_the_saved_config(run_copy, capsys):
    path = _tamper(run_copy, lambda p: p["config"]["model"].update(subnet_hidden=32))
    assert main(["test", "--run", str(run_copy), "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert str(path) in err and "model.subnet_hidden is 32" in err and "for 16" in err


@pytest.mark.parametrize(
    "where, needle",
    [("payload", "'feature_channels'"), ("weights", "'cpc.codes' is missing")],
)
def test_checkpoint_with_missing_keys(where, needle, run_copy, capsys):
    drop = (lambda p: p.pop("feature_channels")) if where == "payload" else (lambda p: p["model"].pop("cpc.codes"))
    path = _tamper(run_copy, drop)
    assert main(["export", "--run", str(run_copy), "--out", str(run_copy / "model.onnx")]) == 2
    err = _one_error_line(capsys)
    assert str(path) in err and needle in err
