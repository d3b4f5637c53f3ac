"""Time and peak memory of all metrics on synthetic data of MVTec AD size (1725 maps of 256 x 256, 15 classes).

Data are generated class by class (not timed); the time covers compute_class_metrics for
every class plus summarize. Run: python benchmarks/bench_metrics.py [--exact] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from vqflow.metrics import compute_class_metrics, summarize

N_CLASSES = 15
N_IMAGES = 1725
SIZE = 256
ANOMALOUS_SHARE = 1258 / 1725  # as in the MVTec AD test set


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_class(
    rng: np.random.Generator, n: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, image scores, masks (1-3 elliptic defects per anomalous image) and smooth float32 maps."""
    labels = (rng.random(n) < ANOMALOUS_SHARE).astype(int)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for k in range(n):
        if labels[k]:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
                ry, rx = rng.uniform(0.01 * size, 0.12 * size, 2)
                masks[k] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        coarse = ndimage.gaussian_filter(rng.normal(size=(size // 8, size // 8)), 1.0)
        noise = ndimage.zoom(coarse, 8, order=1)[:size, :size]
        maps[k] = 4 * noise + ndimage.gaussian_filter(masks[k].astype(np.float32), 3) * 6
    scores = np.sort(maps.reshape(n, -1), axis=1)[:, -int(0.03 * size * size) :].mean(axis=1)
    return labels, scores, masks, maps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/metrics.json")
    parser.add_argument("--exact", action="store_true", help="exact pixel metrics instead of binned")
    parser.add_argument("--images", type=int, default=N_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    sizes = np.full(N_CLASSES, args.images // N_CLASSES)
    sizes[: args.images % N_CLASSES] += 1
    baseline = peak_rss_mb()
    seconds = 0.0
    per_class = {}
    for c, n in enumerate(sizes):
        labels, scores, masks, maps = synthetic_class(rng, int(n), SIZE)
        start = time.perf_counter()
        per_class[f"class{c:02d}"] = compute_class_metrics(labels, scores, masks, maps, exact=args.exact)
        seconds += time.perf_counter() - start
        del labels, scores, masks, maps
    start = time.perf_counter()
    table = summarize(per_class)
    seconds += time.perf_counter() - start
    result = {
        "mode": "exact" if args.exact else "binned",
        "images": int(sizes.sum()),
        "pixels": int(sizes.sum()) * SIZE * SIZE,
        "classes": N_CLASSES,
        "metrics_seconds": round(seconds, 2),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "extra_peak_mb_incl_one_class_data": round(peak_rss_mb() - baseline, 1),
        "mean": table["mean"],
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
