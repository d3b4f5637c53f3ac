"""Flip one switch at a time against the default (ours) and the reference forms; fit + test each.

    python benchmarks/ablations.py --data demo --epochs 20 --out benchmarks/results/ablations
    python benchmarks/ablations.py --data mvtec:/data/mvtec_ad --only ours ref_vq_init

Every variant is trained and evaluated exactly like `vqflow fit` + `vqflow test` (last epoch,
no test labels used for any choice); the table is written to OUT/ablations.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "ours": [],
    "ref_vq_init": ["model.vq_init=reference"],
    "ref_no_latent_logdet": ["model.latent_logdet=false"],
    "ref_both": ["model.vq_init=reference", "model.latent_logdet=false"],
    "no_quantization": ["model.quantize=false"],
    "cap_patterns": ["model.concept_patterns=false"],
    "single_gaussian": ["model.latent=single"],
    "train_normalization": ["score.normalization=train"],
    "nll_image_map": ["score.image_map=nll"],
    "no_blur": ["score.blur_sigma=0"],
}
KEYS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", action="append", default=None)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=9826)
    ap.add_argument("--out", default="benchmarks/results/ablations")
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every variant")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or ["demo"]
    table = {}
    for name in args.only or list(VARIANTS):
        folder = out / name
        sets = [x for s in [*VARIANTS[name], *args.set] for x in ("--set", s)]
        t0 = time.time()
        if not (folder / "checkpoints" / "final.pt").exists():
            cmd = [
                sys.executable,
                "-m",
                "vqflow",
                "fit",
                "--out",
                str(folder),
                "--epochs",
                str(args.epochs),
                "--seed",
                str(args.seed),
                "--quiet",
                *sets,
            ]
            for d in data:
                cmd += ["--data", d]
            run(cmd)
        run([sys.executable, "-m", "vqflow", "test", "--run", str(folder), "--quiet", "--no-report"])
        metrics = json.loads((folder / "metrics.json").read_text())
        table[name] = {
            "switches": VARIANTS[name],
            "seconds": round(time.time() - t0, 1),
            "mean": metrics["mean"],
            "mean_all": metrics["mean_all"],
        }
        print(name, {k: round(100 * v, 1) for k, v in metrics["mean"].items() if v is not None}, flush=True)
    (out / "ablations.json").write_text(
        json.dumps({"data": data, "epochs": args.epochs, "seed": args.seed, "variants": table}, indent=2)
    )
    lines = ["| variant | switches | " + " | ".join(KEYS) + " | mean |", "|---" * (len(KEYS) + 3) + "|"]
    for name, row in table.items():
        cells = ["-" if row["mean"].get(k) is None else f"{100 * row['mean'][k]:.1f}" for k in KEYS]
        lines.append(
            f"| {name} | {' '.join(row['switches']) or 'defaults'} | "
            + " | ".join(cells)
            + f" | {100 * (row['mean_all'] or 0):.1f} |"
        )
    (out / "ablations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
