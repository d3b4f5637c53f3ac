"""Flip one switch at a time against the default (ours) and the reference forms, over seeds.

    python benchmarks/ablations.py --data demo --seeds 0 1 2 --only ours no_quantization cap_patterns single_gaussian
    python benchmarks/ablations.py --data demo --seeds 0 1 2 --only ours kcp_1 kcp_4 kcp_8 kcp_16
    python benchmarks/ablations.py --data fmnist --set data.image_size=64 --name fmnist --only ours no_quantization

Every variant is trained and evaluated exactly like `vqflow fit` + `vqflow test` (last epoch,
no test labels used for any choice), once per seed. Runs go to WORKDIR/<name>/<variant>_s<seed>
(reused when present; a run tested before verdicts were counted is tested again); the table
(mean over seeds, and min..max) to benchmarks/results/ablations_<name>.json and .md, with the
verdicts at each run's calibrated threshold beside the threshold-free metrics.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

VARIANTS: dict[str, list[str]] = {
    "ours": [],
    "ref_vq_init": ["model.vq_init=reference"],
    "ref_no_latent_logdet": ["model.latent_logdet=false"],
    "ref_both": ["model.vq_init=reference", "model.latent_logdet=false"],
    "no_quantization": ["model.quantize=false"],
    "cap_patterns": ["model.concept_patterns=false"],
    "single_gaussian": ["model.latent=single"],
    "no_fusion": ["model.fusion=false"],
    "commit_0.1": ["model.commitment_weight=0.1"],
    "restart_never": ["model.vq_dead_threshold=0"],
    "restart_0.1": ["model.vq_dead_threshold=0.1"],
    "kcp_1": ["model.num_concepts=1"],
    "kcp_4": ["model.num_concepts=4"],
    "kcp_8": ["model.num_concepts=8"],
    "kcp_16": ["model.num_concepts=16"],
    "kcsp_32": ["model.num_patterns=32"],
    "kcsp_512": ["model.num_patterns=512"],
    "train_normalization": ["score.normalization=train"],
    "nll_image_map": ["score.image_map=nll"],
    "no_blur": ["score.blur_sigma=0"],
    "val_0.2": ["data.val_fraction=0.2"],
    "lr_5e-4": ["train.lr=5e-4"],
    "lr_1e-3": ["train.lr=1e-3"],
    "lr_2e-3": ["train.lr=2e-3"],
    "bs_8": ["train.batch_size=8", "train.lr=1e-3"],
    "cosine_lr5e-4": ["train.schedule=cosine", "train.lr=5e-4"],
    "cosine_lr1e-3": ["train.schedule=cosine", "train.lr=1e-3"],
}
KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")
# Verdicts at the calibrated threshold (metrics.json "decisions"): the worst class's false-alarm
# rate on test normals and the share of defective test images caught.
DECISION_KEYS = ("worst_class_false_alarm_rate", "caught_rate")
COLUMNS = KEYS + DECISION_KEYS


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")


def fit_and_test(folder: Path, data: list[str], epochs: int, seed: int, sets: list[str]) -> tuple[dict, float]:
    """metrics.json of one variant and seed (fitted and tested unless already there), and seconds."""
    t0 = time.time()
    if (folder / "metrics.json").exists() and "decisions" not in json.loads((folder / "metrics.json").read_text()):
        (folder / "metrics.json").unlink()  # tested before verdicts were counted: test again
    if not (folder / "metrics.json").exists():
        if not (folder / "checkpoints" / "final.pt").exists():
            cmd = [sys.executable, "-m", "vqflow", "fit", "--out", str(folder), "--epochs", str(epochs)]
            cmd += ["--seed", str(seed), "--quiet", *[x for s in sets for x in ("--set", s)]]
            for d in data:
                cmd += ["--data", d]
            run(cmd)
        run([sys.executable, "-m", "vqflow", "test", "--run", str(folder), "--quiet", "--no-report"])
    return json.loads((folder / "metrics.json").read_text()), time.time() - t0


def working_quantile(folder: Path) -> float:
    """The `score.threshold_quantile` a run calibrated its verdict thresholds with (its config.yaml)."""
    return float(yaml.safe_load((folder / "config.yaml").read_text())["score"]["threshold_quantile"])


def quantile_cell(quantiles: list[float]) -> str:
    """The runs' working quantile: one value when every seed shares it, else each seed's in order
    (runs fitted before and after a change of the default are then visible as such)."""
    return f"{quantiles[0]:g}" if len(set(quantiles)) == 1 else ", ".join(f"{q:g}" for q in quantiles)


def cell(values: list[float]) -> str:
    """'mean (min..max)' in percent; one value alone."""
    v = 100 * np.asarray(values)
    return f"{v[0]:.1f}" if len(v) == 1 else f"{v.mean():.1f} ({v.min():.1f}..{v.max():.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=None, help="data spec(s), default demo")
    ap.add_argument("--name", default="demo", help="table name: benchmarks/results/ablations_<name>.md")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir", default="runs/ablations", help="run folders (kept, reused)")
    ap.add_argument("--results", default="benchmarks/results")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every variant")
    args = ap.parse_args()
    data = args.data or ["demo"]
    work = Path(args.workdir) / args.name
    table: dict[str, dict] = {}
    for name in args.only or list(VARIANTS):
        rows, seconds, quantiles = [], [], []
        for seed in args.seeds:
            folder = work / f"{name}_s{seed}"
            metrics, sec = fit_and_test(folder, data, args.epochs, seed, [*VARIANTS[name], *args.set])
            rows.append(metrics["mean"] | {k: metrics["decisions"][k] for k in DECISION_KEYS})
            seconds.append(sec)
            quantiles.append(working_quantile(folder))
        table[name] = {
            "switches": VARIANTS[name],
            "threshold_quantile": quantiles,
            "per_seed": {str(s): r for s, r in zip(args.seeds, rows)},
            "seconds": [round(s, 1) for s in seconds],
        }
        print(name, {k: cell([r[k] for r in rows]) for k in COLUMNS if rows[0].get(k) is not None}, flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}",
        "command": "python " + " ".join(sys.argv),
        "data": data,
        "epochs": args.epochs,
        "seeds": args.seeds,
    }
    (results / f"ablations_{args.name}.json").write_text(json.dumps({**info, "variants": table}, indent=2))
    lines = [
        f"# Ablations on {', '.join(data)}: mean over seeds {args.seeds} (min..max), %",
        "",
        f"Command: `{info['command']}`  ",
        f"Date: {info['date']}  ",
        f"Machine: {info['machine']}; {args.epochs} epochs, last epoch evaluated, no test label used.",
        "",
        "Verdicts at each run's calibrated threshold (what `vqflow predict` applies): worst class false alarms on",
        "test normals, and defective test images caught, %; `quantile`: the `score.threshold_quantile` the runs",
        "calibrated with (each seed's, in order, where they differ).",
        "",
        "| variant | switches | " + " | ".join(COLUMNS) + " | quantile |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for name, row in table.items():
        runs = list(row["per_seed"].values())
        cells = ["-" if runs[0].get(k) is None else cell([r[k] for r in runs]) for k in COLUMNS]
        cells.append(quantile_cell(row["threshold_quantile"]))
        lines.append(f"| {name} | {' '.join(row['switches']) or 'defaults'} | " + " | ".join(cells) + " |")
    (results / f"ablations_{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
