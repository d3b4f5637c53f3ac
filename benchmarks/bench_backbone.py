"""CPU images/s of the EfficientNet-Lite0 backbone: the package network vs vqflow's fused one.

"original" is the efficientnet_lite_pytorch network (dynamic 'same' padding, BN separate) run
up to the stride-32 tap, as vqflow ran it before; "fused" is `create_backbone(...)`. Runs are
interleaved (one of each per round) and the median of the rounds is kept, because the 2-core
machine is shared. timm's Lite0 is timed too when timm is installed.

    python benchmarks/bench_backbone.py [--size 256] [--batches 1 16] [--rounds 9]
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (as in vqflow.cli); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

from vqflow.backbones import create_backbone, packaged_weights_path

NAME = "efficientnet_lite0"
Runner = Callable[[torch.Tensor], list[torch.Tensor]]


def original_runner(taps: tuple[int, ...]) -> Runner:
    """The unmodified package network with the packaged weights, run up to the last tap."""
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    net.load_state_dict(torch.load(packaged_weights_path(NAME), weights_only=True))
    net.eval()

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            x = net._swish(net._bn0(net._conv_stem(x)))
            maps = []
            for idx, block in enumerate(net._blocks[: taps[-1] + 1]):
                x = block(x)
                if idx in taps:
                    maps.append(x)
            return maps

    return run


def timm_runner() -> Runner | None:
    """timm's Lite0 (features_only, random weights: speed only), or None without timm."""
    if importlib.util.find_spec("timm") is None:
        return None
    import timm

    model = timm.create_model("efficientnet_lite0", features_only=True, pretrained=False).eval()

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return model(x)

    return run


def max_relative_diff(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    """Largest max|a - b| / max|b| over the maps."""
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, theirs))


def time_interleaved(runners: dict[str, Runner], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per forward of each runner, one run of each per round (after a warm-up)."""
    for run in runners.values():
        run(x)
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default="benchmarks/results/backbone.json")
    args = ap.parse_args()

    fused = create_backbone(NAME)
    runners: dict[str, Runner] = {"original": original_runner(fused.taps), "fused": fused}
    timm_run = timm_runner()
    if timm_run is not None:
        runners["timm"] = timm_run
    torch.manual_seed(0)
    check = torch.randn(2, 3, args.size, args.size)
    diff = max_relative_diff(fused(check), runners["original"](check))

    load_before = os.getloadavg()
    results = {}
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size)
        seconds = time_interleaved(runners, x, args.rounds)
        per_s = {key: batch / s for key, s in seconds.items()}
        results[f"batch_{batch}"] = {
            "images_per_second": {key: round(v, 2) for key, v in per_s.items()},
            "ms_per_batch": {key: round(1000 * s, 1) for key, s in seconds.items()},
            "speedup_fused_vs_original": round(per_s["fused"] / per_s["original"], 3),
        }
        print(
            f"batch {batch}: "
            + ", ".join(f"{k} {v:.1f} img/s" for k, v in per_s.items())
            + f", fused/original {per_s['fused'] / per_s['original']:.2f}x"
        )

    report = {
        "backbone": NAME,
        "image_size": args.size,
        "rounds": args.rounds,
        "max_relative_diff_fused_vs_original": diff,
        "timm": "timed" if timm_run is not None else "not installed, skipped",
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"max relative diff {diff:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
