"""Faults: two writers in one run folder, a killed fit, SIGTERM during test, an unfinished fit
and a diverging loss, each through the CLI on the tiny MVTec-layout set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import vqflow.engine.fit as fit_mod
import vqflow.report
from tiny_run import tiny_args
from vqflow.cli import main
from vqflow.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TIMEOUT = 180  # seconds any one wait may take on a busy machine


class Process:
    """A background process with its output in files (no pipe to fill), killed if left running."""

    def __init__(self, args: list[str], folder: Path) -> None:
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, text=True)
        self.pid = self.proc.pid

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the process ended (rc {self.proc.returncode}) before {what}: {self.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}")
            time.sleep(0.02)

    def finish(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(args: list[str], folder: Path) -> Process:
        folder.mkdir(parents=True, exist_ok=True)
        started.append(Process(args, folder))
        return started[-1]

    yield start
    for p in started:
        p.stop()


def _fit_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(epochs)]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_second_writer_is_refused_while_a_fit_runs_and_the_fit_finishes(tiny_data, tmp_path, processes, capsys):
    out, epochs = tmp_path / "run", 4
    first = processes(["-m", "vqflow", *_fit_args(tiny_data, out, epochs)], tmp_path / "first")
    # config.yaml is written once the fit has started writing the folder (holding it, if it locks)
    first.wait_for(lambda: (out / "config.yaml").exists(), "the first fit writes its run folder")
    second = main(_fit_args(tiny_data, out, 1))
    refused_fit = capsys.readouterr().err
    test = main(["test", "--run", str(out), "--quiet"])
    refused_test = capsys.readouterr().err
    assert first.proc.poll() is None, "the first fit was still running when the others were refused"
    assert second == 2 and test == 2
    line = _one_error_line(refused_fit)
    assert str(out) in line and f"pid {first.pid}" in line and "vqflow fit" in line
    assert "wait for it to finish or choose another --out" in line
    assert f"pid {first.pid}" in _one_error_line(refused_test)

    assert first.finish() == 0, first.stderr()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, epochs + 1)), "one writer, one record per epoch"
    assert load_checkpoint(out / "checkpoints" / "final.pt")["epoch"] == epochs
    assert not (out / ".lock").exists(), "the lock file goes with its holder"


def test_a_lock_left_by_a_killed_fit_does_not_block_the_next_one(tiny_data, tmp_path, processes):
    out = tmp_path / "run"
    victim = processes(["-m", "vqflow", *_fit_args(tiny_data, out, 2)], tmp_path / "victim")
    victim.wait_for(lambda: (out / "config.yaml").exists(), "the fit writes its run folder")
    victim.proc.send_signal(signal.SIGKILL)
    victim.finish()
    assert json.loads((out / ".lock").read_text())["pid"] == victim.pid, "the killed fit's lock file is left"
    # killed before its first epoch ended, normally; should it have got that far, resume it
    resume = ["--resume"] if (out / "checkpoints" / "last.pt").exists() else []
    assert main([*_fit_args(tiny_data, out, 2), *resume]) == 0
    assert load_checkpoint(out / "checkpoints" / "final.pt")["epoch"] == 2
    assert not (out / ".lock").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_run(run: Path, to: Path) -> Path:
    """The trained run without any test outputs (the session's run is shared with other tests)."""
    shutil.copytree(run / "checkpoints", to / "checkpoints")
    for name in ("config.yaml", "train_log.jsonl"):
        shutil.copy(run / name, to / name)
    return to


def test_sigterm_during_test_keeps_every_previous_output(tiny_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    old = {
        "metrics.json": b'{"previous": true}\n',
        "metrics.csv": b"class,image_auroc\nprevious,0.5\n",
        "scores.csv": b"path,class,label,score\nprevious.png,x,0,1\n",
        "report.html": b"<!DOCTYPE html><p>previous</p>\n",
        "report_files/roc.png": b"previous png",
    }
    for name, content in old.items():
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(content)
    before = _snapshot(run)
    real = vqflow.report.write_report

    def signalled(out_dir, data):
        os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` while the report is being written
        return real(out_dir, data)

    monkeypatch.setattr(vqflow.report, "write_report", signalled)
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))  # not to die unhandled
    try:
        rc = main(["test", "--run", str(run), "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM and not received, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted") and "previous test outputs" in line and "unchanged" in line
    assert _snapshot(run) == before, "every previous output byte-identical, nothing added"

    # Uninterrupted, the next test replaces every output; without a report of its own, it
    # removes the previous one rather than leave it beside newer metrics.
    assert main(["test", "--run", str(run), "--quiet", "--no-report"]) == 0
    assert "report.html" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["run"]["finished"] is True
    assert all((run / name).read_bytes() != old[name] for name in ("metrics.json", "metrics.csv", "scores.csv"))
    assert not (run / "report.html").exists() and not (run / "report_files").exists()
    assert not list(run.glob(".test-staging-*")) and not (run / ".lock").exists()


def test_testing_a_fit_that_did_not_finish_warns_and_says_so_in_metrics(tiny_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    trained = load_checkpoint(run / "checkpoints" / "final.pt")
    real = fit_mod.vqflow_loss

    def interrupted(out, weight=1.0):
        os.kill(os.getpid(), signal.SIGINT)  # fit saves last.pt and stops after this step
        return real(out, weight)

    # `fit --resume --epochs N` interrupted: final.pt still holds the shorter fit's model
    monkeypatch.setattr(fit_mod, "vqflow_loss", interrupted)
    planned = trained["epoch"] + 1
    assert main(["fit", "--out", str(run), "--resume", "--epochs", str(planned), "--quiet"]) == 128 + signal.SIGINT
    monkeypatch.undo()
    capsys.readouterr()

    assert main(["test", "--run", str(run), "--quiet", "--no-report"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"epoch {trained['chosen_epoch']} of {planned} planned" in warnings[0] and "--resume" in warnings[0]
    info = json.loads((run / "metrics.json").read_text())["run"]
    assert info["finished"] is False and info["planned_epochs"] == planned
    assert info["epoch"] == trained["chosen_epoch"]


def test_a_diverging_loss_warns_once_to_lower_the_learning_rate(tiny_data, tmp_path, capsys):
    main([*_fit_args(tiny_data, tmp_path / "run", 1), "--set", "train.lr=10"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "diverging" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), err
    assert "train.lr=10" in lines[0] and "--set train.lr=1" in lines[0]


def test_predict_locks_its_output_folder(tiny_run, tiny_data, tmp_path, capsys):
    from vqflow.runlock import hold_run_folder

    out = tmp_path / "pred"
    image = tiny_data / "stripes" / "test" / "good" / "000.png"
    with hold_run_folder(out, "predict", "wait"):
        rc = main(["predict", "--run", str(tiny_run), str(image), "--out", str(out), "--quiet"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(out) in line and f"pid {os.getpid()}" in line and "another --out" in line
    assert not out.exists(), "the folder the lock made goes with it when nothing was written"
