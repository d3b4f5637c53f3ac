"""End to end through the CLI on a tiny MVTec-layout set: fit, test, predict, resume, errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import vqflow.engine.fit as fit_mod
from tiny_run import make_tiny_mvtec, tiny_args
from vqflow.cli import main
from vqflow.engine.build import load_run
from vqflow.engine.checkpoint import load_checkpoint, save_checkpoint
from vqflow.errors import VQFlowError


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_mvtec(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(2)]) == 0
    return out


def test_fit_writes_the_run_folder(trained):
    assert (trained / "config.yaml").is_file()
    for name in ("last.pt", "final.pt"):
        payload = load_checkpoint(trained / "checkpoints" / name)
        assert payload["epoch"] == 2 and payload["version"]
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert set(log[0]["codebooks"]) == {"cpc", "cspc1", "cspc2", "cspc3", "cspc4"}
    books = [b for r in log for b in r["codebooks"].values()]
    assert all(set(b) == {"used", "codes", "perplexity", "restarted"} and b["restarted"] >= 0 for b in books)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_nll"]) for r in log)
    assert not list(trained.glob(".feature_cache*")), "the feature cache is removed after fit"


def test_test_writes_metrics_that_match_scores_csv(trained, capsys):
    assert main(["test", "--run", str(trained), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "stripes" in table and "waves" in table and "mean" in table
    metrics = json.loads((trained / "metrics.json").read_text())
    keys = {"image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"}
    assert set(metrics["classes"]) == {"stripes", "waves"} and keys <= set(metrics["mean"])
    with open(trained / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) == {"path", "class", "label", "score", "concept", "threshold", "verdict"}
    cal = load_run(trained, "cpu").calibration
    decisions = metrics["decisions"]
    for cls, m in metrics["classes"].items():
        assert all(0 <= m[k] <= 1 for k in keys)
        sel = [r for r in rows if r["class"] == cls]
        expected = roc_auc_score([int(r["label"]) for r in sel], [float(r["score"]) for r in sel])
        assert m["image_auroc"] == pytest.approx(expected, abs=1e-9)
        for r in sel:  # each verdict is the calibration's own rule (predict's), recomputed here
            thr, verdict = cal.verdict(float(r["score"]), int(r["concept"]))
            assert r["verdict"] == verdict and float(r["threshold"]) == pytest.approx(thr, rel=1e-7)
        normals = [r["verdict"] == "anomalous" for r in sel if r["label"] == "0"]
        defects = [r["verdict"] == "anomalous" for r in sel if r["label"] == "1"]
        assert decisions["classes"][cls] == {
            "normal": len(normals),
            "false_alarms": sum(normals),
            "defective": len(defects),
            "missed": len(defects) - sum(defects),
        }
        # the terminal's verdict table, counted from scores.csv
        printed = next(line.split() for line in table.splitlines()[-4:] if line.split()[:1] == [cls])
        assert printed == [cls, f"{sum(normals)}/{len(normals)}", f"{sum(defects)}/{len(defects)}"]
    flagged = [r["verdict"] == "anomalous" for r in rows if r["label"] == "0"]
    assert "verdicts at the calibrated thresholds" in table
    assert table.splitlines()[-1].split()[:2] == ["total", f"{sum(flagged)}/{len(flagged)}"]
    assert decisions["false_alarm_rate"] == pytest.approx(sum(flagged) / len(flagged))
    assert decisions["worst_class_false_alarm_rate"] == max(
        c["false_alarms"] / c["normal"] for c in decisions["classes"].values()
    )
    assert (trained / "metrics.csv").read_text().startswith("class,image_auroc")
    assert (trained / "report.html").is_file()


def test_predict_scores_good_files_and_reports_bad_ones(trained, data, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(data / "stripes" / "test" / "good" / "000.png", inputs / "a.png")
    shutil.copy(data / "waves" / "test" / "spot" / "000.png", inputs / "b.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "pred"
    assert main(["predict", "--run", str(trained), str(inputs), "--out", str(out), "--quiet"]) == 0
    with open(out / "scores.csv") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert set(rows) == {"a.png", "b.png", "broken.png"}
    assert "broken.png" in rows["broken.png"]["error"] and rows["broken.png"]["score"] == ""
    for name in ("a.png", "b.png"):
        r = rows[name]
        assert r["error"] == "" and r["verdict"] in ("normal", "anomalous")
        assert (float(r["score"]) > float(r["threshold"])) == (r["verdict"] == "anomalous")
        assert Path(r["heatmap"]).is_file()


def _interrupt_at(call: int, monkeypatch, action: str = "signal"):
    real = fit_mod.vqflow_loss
    count = {"n": 0}

    def wrapped(out, weight=1.0):
        count["n"] += 1
        loss = real(out, weight)
        if count["n"] == call:
            if action == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                loss = loss * float("nan")
        return loss

    monkeypatch.setattr(fit_mod, "vqflow_loss", wrapped)


def test_resume_after_sigint_reaches_the_same_model(data, tmp_path, monkeypatch):
    args = ["--data", f"mvtec:{data}", *tiny_args(3)]
    assert main(["fit", "--out", str(tmp_path / "a"), *args]) == 0
    # 12 training images, batch 4: 3 steps an epoch; call 5 is in the middle of epoch 2.
    _interrupt_at(5, monkeypatch)
    assert main(["fit", "--out", str(tmp_path / "b"), *args]) == 128 + signal.SIGINT
    saved = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert not (tmp_path / "b" / "checkpoints" / "final.pt").exists()
    monkeypatch.undo()
    assert main(["fit", "--out", str(tmp_path / "b"), "--resume", "--quiet"]) == 0
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "final.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["calibration"] == b["calibration"]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    _interrupt_at(5, monkeypatch, action="nan")
    rc = main(["fit", "--out", str(tmp_path / "r"), "--data", f"mvtec:{data}", *tiny_args(3)])
    assert rc == 2 and "non-finite loss" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 1


def test_fit_refuses_to_overwrite_a_run(trained, data, capsys):
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(trained), *tiny_args(1)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_corrupt_and_foreign_checkpoints(trained, tmp_path):
    bad = tmp_path / "bad.pt"
    good = (trained / "checkpoints" / "last.pt").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(VQFlowError, match="corrupt"):
        load_checkpoint(bad)
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(VQFlowError, match="not a vqflow checkpoint"):
        load_checkpoint(bad)
    payload = load_checkpoint(trained / "checkpoints" / "last.pt")
    key = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][key] = payload["model"][key] + 1
    torch.save(payload, bad)
    with pytest.raises(VQFlowError, match="checksum"):
        load_checkpoint(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqflow", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["fit", "--data", "nosuch:/x", "--out", "{tmp}/o"], "nosuch"),
        (["fit", "--data", "mvtec:{tmp}/missing", "--out", "{tmp}/o"], "missing"),
        (["fit", "--data", "demo", "--out", "{tmp}/o", "--set", "train.epoch=3"], "train.epochs"),
        (["test", "--run", "{tmp}/norun"], "norun"),
        (["test", "--run", "{tmp}/junk"], "last.pt"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "junk" / "checkpoints").mkdir(parents=True)
    (tmp_path / "junk" / "checkpoints" / "last.pt").write_bytes(b"garbage")
    r = _cli(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in r.stderr


def test_torchrun_two_cpu_processes(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "vqflow",
        "fit",
        "--data",
        f"mvtec:{data}",
        "--out",
        str(out),
        "--device",
        "cpu",
        *tiny_args(2),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    payload = load_checkpoint(out / "checkpoints" / "final.pt")
    assert payload["epoch"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2, "one process writes the log"
    assert not list(out.glob(".feature_cache*"))


def test_resume_with_a_different_model_config_is_refused(trained, data, capsys):
    args = ["fit", "--data", f"mvtec:{data}", "--out", str(trained), "--resume", *tiny_args(3)]
    assert main([*args, "--set", "model.global_dim=24"]) == 2
    assert "model.global_dim" in capsys.readouterr().err


def test_python_api_mirrors_the_cli(data, tmp_path):
    import vqflow
    from tiny_run import TINY_SET

    overrides = {k.replace(".", "__"): v for k, v in (item.split("=", 1) for item in TINY_SET)}
    run = vqflow.fit(
        "fast", out=tmp_path / "api", quiet=True, data__specs=[f"mvtec:{data}"], train__epochs=1, **overrides
    )
    metrics = vqflow.evaluate(run, quiet=True, report=False)
    assert set(metrics["classes"]) == {"stripes", "waves"}
    assert json.loads((run / "metrics.json").read_text())["mean"] == metrics["mean"]
    rows = vqflow.predict(run, [data / "waves" / "test" / "spot"], tmp_path / "p", quiet=True)
    assert len(rows) == 3 and all(r["verdict"] in ("normal", "anomalous") for r in rows)


def test_select_val_evaluates_the_epoch_with_lowest_heldout_nll(data, tmp_path):
    out = tmp_path / "val"
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(3), "--set", "train.select=val"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    best_epoch = min(log, key=lambda r: r["val_nll"])["epoch"]
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert final["chosen_epoch"] == best_epoch == best["epoch"]
    for k in best["model"]:
        assert torch.equal(final["model"][k], best["model"][k]), k


def test_disk_feature_cache_trains_the_same_model_as_memory(data, tmp_path):
    runs = {}
    for mode in ("memory", "disk"):
        out = tmp_path / mode
        assert (
            main(
                [
                    "fit",
                    "--data",
                    f"mvtec:{data}",
                    "--out",
                    str(out),
                    *tiny_args(1),
                    "--set",
                    f"train.feature_cache={mode}",
                ]
            )
            == 0
        )
        runs[mode] = load_checkpoint(out / "checkpoints" / "final.pt")["model"]
        assert not list(out.glob(".feature_cache*")), "the disk cache is deleted after fit"
    for k in runs["memory"]:
        assert torch.equal(runs["memory"][k], runs["disk"][k]), k


@pytest.mark.parametrize(
    "where",
    ["calibration", "vq_rng", "config", "optimizer", "history"],
)
def test_checksum_covers_the_whole_payload(trained, tmp_path, where):
    """A changed calibration threshold, random state, config value, optimizer moment or log
    entry is caught, not only a changed weight."""
    payload = load_checkpoint(trained / "checkpoints" / "final.pt")
    if where == "calibration":
        payload["calibration"]["threshold"] = float(np.nextafter(payload["calibration"]["threshold"], np.inf))
    elif where == "vq_rng":
        state = next(iter(payload["vq_rng"].values()))
        state[7] = state[7] ^ 1
    elif where == "config":
        payload["config"]["score"]["topk"] = 0.5
    elif where == "optimizer":
        moment = next(iter(payload["optimizer"]["state"].values()))["exp_avg"]
        moment.view(-1)[0] += 1e-7
    else:
        payload["history"][0]["loss"] += 1e-9
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(VQFlowError, match="checksum"):
        load_checkpoint(bad)


def test_a_checkpoint_with_python_objects_is_refused_without_unsafe_advice(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "vqflow-checkpoint-v1", "model": {}, "x": Path("/")}, bad)
    with pytest.raises(VQFlowError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "not a vqflow checkpoint" in message and "weights_only" not in message


def test_any_trained_artefact_marks_a_run(trained, data, tmp_path, capsys):
    """A folder with final.pt but no last.pt (or only a log) is not trained over."""
    out = tmp_path / "copied"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "final.pt").write_bytes((trained / "checkpoints" / "final.pt").read_bytes())
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(1)]) == 2
    assert "final.pt" in capsys.readouterr().err
    assert not (out / "train_log.jsonl").exists()


def test_a_saved_config_is_reusable_as_is(trained, tmp_path):
    out = tmp_path / "again"
    assert main(["fit", "--config", str(trained / "config.yaml"), "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    assert (
        load_checkpoint(out / "checkpoints" / "final.pt")["config"]["data"]["specs"]
        == load_checkpoint(trained / "checkpoints" / "final.pt")["config"]["data"]["specs"]
    )


def test_resume_applies_what_may_change_and_refuses_the_rest(data, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(1)]) == 0
    (out / "checkpoints" / "final.pt").unlink()  # as if fit had stopped after epoch 1
    for extra, needle in (
        (["--seed", "5"], "train.seed"),
        (["--set", "train.lr=0.5"], "train.lr"),
        (["--preset", "reference"], "--preset"),
    ):
        assert main(["fit", "--out", str(out), "--resume", "--quiet", *extra]) == 2
        assert needle in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "--out",
                str(out),
                "--resume",
                "--quiet",
                "--epochs",
                "2",
                "--device",
                "cpu",
                "--set",
                "score.topk=0.05",
                "--set",
                "train.precision=fp32",
            ]
        )
        == 0
    )
    final = load_checkpoint(out / "checkpoints" / "final.pt")
    assert final["epoch"] == 2 and final["config"]["train"]["device"] == "cpu"
    assert final["config"]["score"]["topk"] == 0.05 and final["config"]["train"]["precision"] == "fp32"


def test_cosine_schedule_warms_up_then_decays_and_constant_keeps_the_reference():
    from vqflow.config import preset, set_key

    cfg = preset("fast")
    set_key(cfg, "train.epochs", 24)
    set_key(cfg, "train.warmup_epochs", 4)
    constant = [fit_mod.lr_factor(e, cfg) for e in range(24)]
    set_key(cfg, "train.schedule", "cosine")
    cosine = [fit_mod.lr_factor(e, cfg) for e in range(24)]
    assert constant[:4] == cosine[:4] == pytest.approx([0.1, 0.325, 0.55, 0.775])
    assert constant[4:] == [1.0] * 20
    assert cosine[4] == 1.0 and all(a > b for a, b in zip(cosine[4:], cosine[5:]))
    assert 0 < cosine[-1] < 0.01  # the last epoch still learns, barely
    # a half-period of cosine around 0.5: the decay spends half the constant schedule's steps
    assert np.mean(cosine[4:]) == pytest.approx(0.5, abs=0.03)


def test_cosine_resume_needs_the_same_epochs_and_old_runs_resume_as_constant(data, tmp_path, capsys):
    out = tmp_path / "cos"
    args = ["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(3), "--set", "train.schedule=cosine"]
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log]  # warm-up over 1 epoch, then cosine over 2: 1e-3, then 1e-3 / 2
    assert lrs == pytest.approx([1e-4, 1e-3, 5e-4])
    (out / "checkpoints" / "final.pt").unlink()
    assert main(["fit", "--out", str(out), "--resume", "--quiet", "--epochs", "4"]) == 2
    assert "train.schedule=cosine" in capsys.readouterr().err
    # A checkpoint written before train.schedule existed resumes as the constant schedule it had.
    last = out / "checkpoints" / "last.pt"
    payload = load_checkpoint(last, require=())
    del payload["config"]["train"]["schedule"]
    save_checkpoint(last, payload)
    assert main(["fit", "--out", str(out), "--resume", "--quiet", "--epochs", "4"]) == 0
    assert load_checkpoint(out / "checkpoints" / "final.pt")["epoch"] == 4


def test_resume_drops_log_records_past_the_checkpoint_and_stale_temporaries(data, tmp_path):
    out = tmp_path / "k"
    assert main(["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(1)]) == 0
    (out / "checkpoints" / "final.pt").unlink()
    log = out / "train_log.jsonl"
    first = log.read_text().splitlines()[0]
    # A kill after the epoch-2 log line but before its checkpoint: the log is one epoch ahead.
    log.write_text(first + "\n" + first.replace('"epoch": 1', '"epoch": 2') + "\n")
    stale = out / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["fit", "--out", str(out), "--resume", "--quiet", "--epochs", "2"]) == 0
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == [1, 2]
    assert not stale.exists()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("train.epochs", "ten", "an integer"),
        ("train.lr", "fast", "a number"),
        ("model.quantize", "maybe", "true or false"),
        ("model.flow_blocks", "a,b", "list of integers"),
    ],
)
def test_config_type_errors_are_in_words(key, value, words):
    from vqflow import config

    with pytest.raises(VQFlowError) as err:
        config.set_key(config.preset("fast"), key, value)
    assert words in str(err.value) and "<class" not in str(err.value)


@pytest.mark.parametrize("seed", ["-5", "1" + "0" * 24])
def test_out_of_range_seeds_name_the_key(seed, tmp_path):
    r = _cli("fit", "--data", "demo", "--out", str(tmp_path / "o"), "--seed", seed)
    assert r.returncode == 2 and "train.seed" in r.stderr and "unexpected" not in r.stderr


def test_deterministic_switch_turns_on_deterministic_algorithms(trained, data, tmp_path):
    """train.deterministic=true runs every op of fit in torch's deterministic mode (none raises)
    and, on a CPU, trains exactly the model of the default run."""
    out = tmp_path / "det"
    try:
        args = ["fit", "--data", f"mvtec:{data}", "--out", str(out), *tiny_args(2)]
        assert main([*args, "--set", "train.deterministic=true"]) == 0
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    a = load_checkpoint(trained / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(out / "checkpoints" / "final.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
