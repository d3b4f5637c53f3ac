"""benchmarks/ablations.py: the table names the working quantile its verdict columns were counted at."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from vqflow.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ablations


def fake_run(folder: Path, quantile: float, auroc: float) -> None:
    """A tested run as ablations.py finds it: config.yaml and metrics.json with verdicts."""
    folder.mkdir(parents=True)
    cfg = Config().to_dict()
    cfg["score"]["threshold_quantile"] = quantile
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    mean = {k: auroc for k in ablations.KEYS}
    decisions = {"worst_class_false_alarm_rate": 0.25, "caught_rate": 0.5}
    (folder / "metrics.json").write_text(json.dumps({"mean": mean, "decisions": decisions}))


def test_the_table_shows_one_quantile_or_each_seeds_where_they_differ(tmp_path, monkeypatch):
    work, results = tmp_path / "work", tmp_path / "results"
    fake_run(work / "t" / "ours_s0", 0.98, 0.9)
    fake_run(work / "t" / "ours_s1", 0.98, 0.8)
    fake_run(work / "t" / "no_quantization_s0", 0.99, 0.9)
    fake_run(work / "t" / "no_quantization_s1", 0.97, 0.9)
    argv = ["ablations.py", "--name", "t", "--seeds", "0", "1", "--only", "ours", "no_quantization"]
    monkeypatch.setattr(sys, "argv", [*argv, "--workdir", str(work), "--results", str(results)])
    ablations.main()

    rows = {line.split(" | ")[0].strip("| "): line for line in (results / "ablations_t.md").read_text().splitlines()}
    assert rows["ours"].endswith(
        "| 85.0 (80.0..90.0) | 85.0 (80.0..90.0) | 25.0 (25.0..25.0) | 50.0 (50.0..50.0) | 0.98 |"
    )
    assert rows["no_quantization"].endswith("| 0.99, 0.97 |")
    saved = json.loads((results / "ablations_t.json").read_text())["variants"]
    assert saved["no_quantization"]["threshold_quantile"] == [0.99, 0.97]
