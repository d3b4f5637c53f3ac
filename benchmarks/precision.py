"""What a half-precision backbone (train.precision on CUDA) changes in a trained run's results.

    python benchmarks/precision.py --runs runs/ablations/demo_sweep/ours_s{0,1,2} --precisions fp16

Each run is tested as `vqflow test` tests it, once with the fp32 backbone and once per
precision with the backbone under torch.autocast, which is what CUDA runs (here on the CPU,
whose fp16 convolutions are emulated and slow: the speed is not the point). The flows and
the run's calibration stay as trained, in fp32, so this is the larger change of the two a user
meets: a run fitted on one device and tested or predicted on a GPU. Written to
benchmarks/results/precision.json and .md: the metric means, the largest score change relative
to the spread of the test scores, the verdicts that flip and the concepts that change.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vqflow.data import ImageDataset, load_data
from vqflow.engine.build import PRECISIONS, load_run
from vqflow.engine.evaluate import class_metrics, score_dataset
from vqflow.report.decisions import decide

KEYS = ("image_auroc", "pixel_auroc", "aupro")


def measure(run: Path, precisions: list[str]) -> dict:
    """Metrics, score changes and verdict flips of one run under each backbone precision."""
    tr = load_run(run, "cpu")
    cfg = tr.cfg
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    dataset = ImageDataset(splits.test, cfg.data.image_size, has_masks=splits.has_masks)
    rows = {}
    base = None
    for name in ["fp32", *precisions]:
        tr.detector.autocast = PRECISIONS[name]
        scored = score_dataset(tr, dataset, quiet=True, desc=name)
        metrics = class_metrics(scored, splits.mask_classes)["mean"]
        verdicts = decide(tr.calibration, scored.scores, scored.concepts)
        row = {k: metrics.get(k) for k in KEYS}
        if base is None:
            base = (scored, verdicts)
        else:
            spread = float(np.std(base[0].scores))
            row["max_score_change_per_sd"] = float(np.abs(scored.scores - base[0].scores).max() / spread)
            row["max_map_change"] = float(np.abs(scored.maps - base[0].maps).max() / np.ptp(base[0].maps))
            row["verdict_flips"] = int((verdicts.flagged != base[1].flagged).sum())
            row["concept_changes"] = int((scored.concepts != base[0].concepts).sum())
        row["images"] = len(scored.paths)
        rows[name] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    ap.add_argument("--precisions", nargs="+", default=["fp16"], choices=["fp16", "bf16"])
    ap.add_argument("--results", default="benchmarks/results")
    args = ap.parse_args()
    table = {run: measure(Path(run), args.precisions) for run in args.runs}
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}",
        "command": "python " + " ".join(sys.argv),
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "precision.json").write_text(json.dumps({**info, "runs": table}, indent=2))
    lines = [
        "# A half-precision backbone against fp32, same trained runs (flows and calibration in fp32)",
        "",
        f"Command: `{info['command']}` ({info['date']}, {info['machine']}).",
        "",
        "| run | backbone | image AUROC | pixel AUROC | AUPRO | largest score change (test-score SDs) "
        "| largest map change (of the map range) | verdicts flipped | concepts changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in table.items():
        for name, r in rows.items():
            cells = [f"{100 * r[k]:.2f}" if r.get(k) is not None else "-" for k in KEYS]
            extra = (
                [
                    f"{r['max_score_change_per_sd']:.4f}",
                    f"{r['max_map_change']:.4f}",
                    f"{r['verdict_flips']} of {r['images']}",
                    f"{r['concept_changes']}",
                ]
                if "verdict_flips" in r
                else ["", "", "", ""]
            )
            lines.append(f"| {Path(run).name} | {name} | " + " | ".join(cells + extra) + " |")
    (results / "precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
