"""One table for Fashion-MNIST's four unified splits from `peers.py --data fmnist --normal IDS` results.

    python benchmarks/peers_splits.py benchmarks/results/peers_fmnist_normal*.json

Image AUROC (%) of every model on each split, mean (min..max) over its seeds, and the mean over
the four splits per seed (a model's seeds that ran on every split), then mean (min..max) of that.
Several result files of one split (models run apart) are merged; a model and seed in two files
is an error. Out: peers_fmnist_splits.md and .json beside the first input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from peers import spread  # a sibling script in benchmarks/
from vqflow.data.one_vs_rest import UNIFIED_SPLITS

# Result files name a split by its normal garments ("01234"); the table by these names.
SPLITS = {"".join(map(str, s)): name for s, name in zip(UNIFIED_SPLITS, ("{0-4}", "{5-9}", "evens", "odds"))}


def collect(paths: list[Path]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {split: {seed: image AUROC in %}}} from peers.py result files."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for path in paths:
        report = json.loads(path.read_text())
        split = "".join(map(str, report["data"]["normal_classes"]))
        for model, res in report["models"].items():
            seeds = table.setdefault(model, {}).setdefault(split, {})
            for seed, run in res["per_seed"].items():
                if seed in seeds:
                    raise SystemExit(f"{path}: {model} seed {seed} of split {split} is in two files; keep one")
                seeds[seed] = 100 * run["metrics"]["mean"]["image_auroc"]
    return table


def split_means(per_split: dict[str, dict[str, float]]) -> list[float]:
    """Per seed that ran on all four splits, the mean of its four image AUROCs."""
    if set(per_split) != set(SPLITS):
        return []
    common = set.intersection(*(set(v) for v in per_split.values()))
    return [float(np.mean([per_split[s][seed] for s in SPLITS])) for seed in sorted(common, key=int)]


def markdown(table: dict, means: dict[str, list[float]], command: str) -> str:
    """The table: per split mean (min..max) over seeds, and the four-split means `means` per model."""
    lines = [
        "# Fashion-MNIST, four unified splits: image AUROC %, mean (min..max) over seeds",
        "",
        f"Command: `{command}`",
        "",
        "| model | " + " | ".join(SPLITS.values()) + " | 4-split mean (per seed, seeds on every split) |",
        "|---" * (len(SPLITS) + 2) + "|",
    ]
    for model, per_split in table.items():
        cells = [spread(list(per_split.get(s, {}).values())) for s in SPLITS]
        m = means[model]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {spread(m)} ({len(m)} seed{'s' * (len(m) != 1)}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="peers_fmnist_normal*.json files")
    args = ap.parse_args(argv)
    table = collect(args.results)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out = args.results[0].parent / "peers_fmnist_splits.json"
    means = {model: split_means(per_split) for model, per_split in table.items()}
    out.write_text(json.dumps({"command": command, "image_auroc": table, "four_split_mean": means}, indent=2) + "\n")
    text = markdown(table, means, command)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
