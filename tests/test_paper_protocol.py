"""benchmarks/paper.sh and its table: the paper's protocol as one command, the table form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_run import TINY_SET

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import paper_table  # noqa: E402


def _metrics(folder: Path, classes: dict[str, tuple[float, float]]) -> Path:
    folder.mkdir(parents=True)
    rows = {c: {"image_auroc": i, "pixel_auroc": p, "aupro": 0.5} for c, (i, p) in classes.items()}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("image_auroc", "pixel_auroc", "aupro")}
    (folder / "metrics.json").write_text(json.dumps({"classes": rows, "mean": mean, "run": {"epoch": 3}}))
    return folder


def test_mvtec_table_puts_the_published_figures_beside_ours(tmp_path, capsys):
    run = _metrics(tmp_path / "r", {"bottle": (0.91, 0.95), "zipper": (0.5, 0.6)})
    assert paper_table.main(["mvtec", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bottle | 91.0 | 95.0 | 50.0 | 100.0 | 98.4 |" in out
    assert "| zipper | 50.0 | 60.0 | 50.0 | 100.0 | 98.9 |" in out
    assert "| **mean** | 70.5 | 77.5 | 50.0 | 99.5 | 98.3 |" in out
    assert "never chosen on test labels" in out


def test_cifar_table_needs_the_four_splits_and_averages_them(tmp_path, capsys):
    runs = [_metrics(tmp_path / f"s{i}", {"cifar10": (v, 0.0)}) for i, v in enumerate((0.8, 0.9, 0.7, 0.6))]
    assert paper_table.main(["cifar10", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "| {5,6,7,8,9} | 90.0 |" in out and "| **mean** | 75.0 |" in out
    with pytest.raises(SystemExit):
        paper_table.main(["cifar10", *map(str, runs[:2])])
    assert paper_table.main(["mvtec", str(tmp_path / "nothing")]) == 2


def test_paper_sh_fits_tests_and_prints_the_table(tiny_data, tmp_path):
    sets = [x for s in TINY_SET for x in ("--set", s)]
    cmd = ["bash", str(ROOT / "benchmarks" / "paper.sh"), "mvtec", str(tiny_data), "--preset", "fast"]
    cmd += ["--out", str(tmp_path / "runs"), "--epochs", "1", "--quiet", *sets]
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "mvtec_fast" / "metrics.json").read_text())
    mean = metrics["mean"]
    assert f"| **mean** | {100 * mean['image_auroc']:.1f} | {100 * mean['pixel_auroc']:.1f} |" in r.stdout
    assert "| stripes |" in r.stdout and "| waves |" in r.stdout
    bad = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "paper.sh"), "imagenet", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "usage" in bad.stderr
