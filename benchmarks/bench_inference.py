"""Cost of the VQ-Flow pipeline: latency, images/s, MACs, parameters, training-step time, peak RSS.

Answers "does the fast preset's flow head cost no more than the backbone on a CPU?" with both
multiply-accumulates and measured time. The reference preset gets MACs/params only (its
ConvNeXtV2 backbone needs timm), unless --time-reference.

    python benchmarks/bench_inference.py [--preset fast reference] [--runs 3] [--train-runs 3]
                                         [--threads N] [--time-reference] [--out FILE.json]

On a GPU, against the paper's "more than 30 FPS" (the backbone under train.precision's autocast,
as `vqflow` runs it there; random backbone weights are enough for speed):

    python benchmarks/bench_inference.py --device cuda --batches 1 32 --time-reference \
        --random-backbone --out benchmarks/results/inference_cuda.json
"""

from __future__ import annotations

import os

# Must precede the first torch import. With the default (spinning) OpenMP threads, a 2-core
# machine shared with other work slows torch ~40x (Lite0 batch 1: ~2.2 s instead of ~50 ms),
# because every op waits at a barrier for a descheduled thread. Set OMP_WAIT_POLICY=ACTIVE
# in the environment to measure torch's default instead; the JSON records the policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vqflow import config
from vqflow.backbones import create_backbone
from vqflow.config import Config
from vqflow.engine.build import build_backbone, build_detector, build_head
from vqflow.errors import VQFlowError
from vqflow.model.flows import count_parameters
from vqflow.model.layers import pool_features
from vqflow.model.quantizer import VectorQuantizer
from vqflow.model.vqflow import VQFlow, vqflow_loss

# Stage channels of backbones that cannot be built here (timm is absent): enough for head MACs.
KNOWN_CHANNELS: dict[str, tuple[int, int, int, int]] = {"convnextv2_base": (128, 256, 512, 1024)}
# METHOD.md section 10: the frozen ConvNeXtV2-B at 384 px, for the reference comparison.
DOCUMENTED_BACKBONE_GMACS = {"convnextv2_base": 41.0}
STAGE_STRIDES = (4, 8, 16, 32)
LATENCY_BATCHES = {"fast": (1, 4, 16), "reference": (1,)}  # CPU: per-image cost grows with batch
TRAIN_BATCH_CAP = {"reference": 2}  # the reference head's activations and Adam state are GBs


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: the machine may be shared, which slows every timing."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize() -> None:
    """Wait for queued CUDA work (a no-op without CUDA), so that a timing covers the kernels."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Median wall time of `fn()` over `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_macs(root: nn.Module, run: Callable[[], object], groups: dict[str, nn.Module] | None = None) -> dict:
    """Multiply-accumulates per sample during one `run()`, by group, counted with forward hooks.

    Conv2d: output elements x (in_channels / groups) x kernel area; Linear: output elements x
    in_features; biases are not counted (as in the flows' `.macs()`). Each layer goes to the
    first of `groups` holding it, else to "other". Every VectorQuantizer adds its code search,
    rows x K x D, under "codebook_search". The batch size is read from each call's tensors.
    """
    owner: dict[int, str] = {}
    for name, group in (groups or {}).items():
        for m in group.modules():
            owner.setdefault(id(m), name)
    totals = dict.fromkeys([*(groups or {}), "other", "codebook_search"], 0)

    def conv_hook(layer: nn.Conv2d, _inputs: tuple, out: torch.Tensor) -> None:
        per_out = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        totals[owner.get(id(layer), "other")] += out.numel() // out.shape[0] * per_out

    def linear_hook(layer: nn.Linear, _inputs: tuple, out: torch.Tensor) -> None:
        totals[owner.get(id(layer), "other")] += out.numel() // out.shape[0] * layer.in_features

    def quantizer_hook(q: VectorQuantizer, inputs: tuple, _out: object) -> None:
        x = inputs[0]
        totals["codebook_search"] += x.numel() // x.shape[0] * q.num_codes

    hooks = {nn.Conv2d: conv_hook, nn.Linear: linear_hook, VectorQuantizer: quantizer_hook}
    handles = [
        m.register_forward_hook(hook) for m in root.modules() for kind, hook in hooks.items() if isinstance(m, kind)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return totals


def flow_macs(head: VQFlow, feats: list[torch.Tensor]) -> tuple[int, int]:
    """(parallel flows, fusion) MACs per sample from the blocks' own `.macs()` methods."""
    sizes = [tuple(int(d) for d in f.shape[-2:]) for f in feats[:3]]
    parallel = sum(flow.macs(*hw) for flow, hw in zip(head.flows, sizes))
    return parallel, head.fusion.macs(sizes)


def head_macs(head: VQFlow, feats: list[torch.Tensor]) -> dict:
    """Head MACs per sample: flows and fusion (`.macs()`), the other layers (hooks), code search.

    `flows_hook_check` counts the flow and fusion convs with hooks too: it must equal the sum
    of the `.macs()` numbers, which cross-checks both counts.
    """
    one = [f[:1] for f in feats]
    parallel, fusion = flow_macs(head, one)
    counted = count_macs(head, lambda: head(one), {"flows": nn.ModuleList([head.flows, head.fusion])})
    total = parallel + fusion + counted["other"] + counted["codebook_search"]
    return {
        "flows": parallel,
        "fusion": fusion,
        "other_layers": counted["other"],
        "codebook_search": counted["codebook_search"],
        "total": total,
        "flows_hook_check": counted["flows"],
        "flows_hook_check_ok": counted["flows"] == parallel + fusion,
    }


def parameter_counts(head: VQFlow, backbone: nn.Module | None) -> dict:
    """Trainable head parameters (flows, fusion, rest) and all backbone parameters (frozen)."""
    flows = count_parameters(head.flows)
    fusion = count_parameters(head.fusion)
    total = count_parameters(head)
    counts = {"head_total": total, "head_flows": flows, "head_fusion": fusion}
    counts["head_other"] = total - flows - fusion
    counts["backbone"] = sum(p.numel() for p in backbone.parameters()) if backbone is not None else None
    return counts


def synthetic_features(
    channels: tuple[int, ...], image_size: int, batch: int, device: torch.device | None = None
) -> list[torch.Tensor]:
    """Random pooled features (h1, h2, h3, f4) of the shapes a stride-4..32 backbone gives."""
    sides = [-(-image_size // s) for s in STAGE_STRIDES]
    pooled = [(n - 1) // 2 + 1 for n in sides[:3]] + [sides[3]]  # AvgPool(3, 2, 1) on h1..h3
    return [torch.randn(batch, c, n, n, device=device) for c, n in zip(channels, pooled)]


def try_backbone(cfg: Config, device: torch.device, random: bool = False) -> tuple[nn.Module | None, str | None]:
    """The preset's frozen backbone on `device` (random weights with `random`), or (None, why)
    where it cannot be built here."""
    try:
        if random:
            return create_backbone(cfg.model.backbone, pretrained=False).to(device), "random weights"
        return build_backbone(cfg, device), None
    except VQFlowError as e:
        return None, str(e)


def initialised_head(cfg: Config, channels: tuple[int, int, int, int], feats: list[torch.Tensor]) -> VQFlow:
    """The head (on the features' device) after one training-mode forward (seeds the codebooks), then in eval mode."""
    head = build_head(cfg, channels).to(feats[0].device)
    head.train()
    with torch.no_grad():
        head(feats)
    return head.eval()


def eval_head(cfg: Config, channels: tuple[int, int, int, int], feats: list[torch.Tensor]) -> VQFlow:
    """A fresh head in eval mode, codebooks unseeded: enough for MACs (lookups cost the same)."""
    return build_head(cfg, channels).to(feats[0].device).eval()


def train_step_seconds(cfg: Config, head: VQFlow, feats: list[torch.Tensor], warmup: int, runs: int) -> float:
    """Median time of one fit step on cached features: forward, loss, backward, clip, Adam."""
    opt = torch.optim.Adam(head.parameters(), lr=cfg.train.lr)
    head.train()

    def step() -> None:
        loss = vqflow_loss(head(feats), cfg.model.commitment_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.train.grad_clip)
        opt.step()

    seconds = median_seconds(step, warmup, runs)
    head.eval()
    return seconds


def latency_ms(fn: Callable[[torch.Tensor], object], inputs: torch.Tensor, warmup: int, runs: int) -> float:
    """Median milliseconds per image of `fn(inputs)` under no_grad."""

    def call() -> None:
        with torch.no_grad():
            fn(inputs)

    return 1000 * median_seconds(call, warmup, runs) / inputs.shape[0]


def time_pipeline(
    cfg: Config,
    backbone: nn.Module | None,
    head: VQFlow,
    channels: tuple[int, ...],
    batches: tuple[int, ...],
    runs: int,
    device: torch.device,
) -> dict:
    """Backbone, head and full-detector latency per image (and images/s) at each batch size."""
    size = cfg.data.image_size
    timing: dict = {}
    for b in batches:
        repeats = runs if b > 1 else 2 * runs
        images = torch.randn(b, 3, size, size, device=device)
        detector = build_detector(cfg, backbone, head).eval() if backbone is not None else None
        if detector is not None:
            feats = detector.features(images)
        else:
            feats = synthetic_features(channels, size, b, device)
        row = {"head_ms_per_image": latency_ms(lambda _x, f=feats: head(f), images, 1, repeats)}
        if backbone is not None:
            # The detector's own features step: on CUDA the backbone under train.precision's autocast.
            row["backbone_ms_per_image"] = latency_ms(detector.features, images, 1, repeats)
            # Its backbone and head were just warmed at this batch size: no extra warm-up call.
            row["detector_ms_per_image"] = latency_ms(detector, images, 0, repeats)
            row["detector_images_per_second"] = 1000 / row["detector_ms_per_image"]
            row["head_over_backbone_time"] = row["head_ms_per_image"] / row["backbone_ms_per_image"]
        timing[f"batch_{b}"] = row
    return timing


def macs_section(cfg: Config, head: VQFlow, backbone: nn.Module | None, feats: list[torch.Tensor]) -> dict:
    """MACs per image of head and backbone, and whether the head costs no more than the backbone.

    Without a backbone the comparison uses the documented backbone cost (METHOD.md 10), and
    `comparison_basis` says so.
    """
    macs: dict = {"head": head_macs(head, feats), "backbone": None, "comparison_basis": None}
    reference_macs = None
    if backbone is not None:
        one = torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size, device=feats[0].device)
        macs["backbone"] = reference_macs = count_macs(backbone, lambda: backbone(one))["other"]
        macs["comparison_basis"] = "backbone counted with hooks"
    elif cfg.model.backbone in DOCUMENTED_BACKBONE_GMACS:
        reference_macs = DOCUMENTED_BACKBONE_GMACS[cfg.model.backbone] * 1e9
        macs["comparison_basis"] = "backbone GMACs documented in METHOD.md section 10"
    head_total = macs["head"]["total"]
    macs["gmacs"] = {
        "backbone": None if reference_macs is None else reference_macs / 1e9,
        "head_total": head_total / 1e9,
        "head_flows_and_fusion": (macs["head"]["flows"] + macs["head"]["fusion"]) / 1e9,
    }
    if reference_macs:
        macs["head_over_backbone"] = head_total / reference_macs
        macs["head_costs_no_more_than_backbone"] = head_total <= reference_macs
    return macs


def timing_section(
    name: str,
    cfg: Config,
    backbone: nn.Module | None,
    head: VQFlow,
    feats: list[torch.Tensor],
    args: argparse.Namespace,
) -> dict:
    """Latencies at the preset's batch sizes and the training-step time on cached features."""
    channels = tuple(int(f.shape[1]) for f in feats)
    batches = tuple(args.batches or LATENCY_BATCHES.get(name, (1, cfg.train.batch_size)))
    timing = time_pipeline(cfg, backbone, head, channels, batches, args.runs, feats[0].device)
    train_batch = min(cfg.train.batch_size, TRAIN_BATCH_CAP.get(name, cfg.train.batch_size))
    step = train_step_seconds(cfg, head, [f[:train_batch] for f in feats], 1, args.train_runs)
    timing["train_step"] = {
        "batch": train_batch,
        "seconds": step,
        "images_per_second": train_batch / step,
        "what": "forward + loss + backward + grad clip + Adam on cached features (the epoch cost with the cache)",
    }
    return timing


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    """Everything measured for one preset; timing only where the preset is timed."""
    t0 = time.perf_counter()
    cfg = config.preset(name)
    torch.manual_seed(args.seed)
    timed = name != "reference" or args.time_reference
    device = torch.device(args.device)
    no_backbone = (None, "not built (needs timm): MACs/params only")
    backbone, why = try_backbone(cfg, device, args.random_backbone) if timed else no_backbone
    size = cfg.data.image_size
    init_batch = cfg.train.batch_size if timed else 1
    if backbone is not None:
        channels = tuple(backbone.channels)
        with torch.no_grad():  # before a head exists
            feats = pool_features(backbone(torch.randn(init_batch, 3, size, size, device=device)))
    else:
        channels = KNOWN_CHANNELS.get(cfg.model.backbone)
        if channels is None:
            raise VQFlowError(f"--preset {name}: backbone '{cfg.model.backbone}' cannot be built here ({why})")
        feats = synthetic_features(channels, size, init_batch, device)
    head = (initialised_head if timed else eval_head)(cfg, channels, feats)
    result: dict = {
        "backbone": cfg.model.backbone,
        "image_size": size,
        "feature_channels": list(channels),
        "pooled_feature_sides": [int(f.shape[-1]) for f in feats],
        "flow_blocks": cfg.model.flow_blocks,
        "backbone_note": why,
        "params": parameter_counts(head, backbone),
        "macs_per_image": macs_section(cfg, head, backbone, feats),
    }
    if timed:
        result["timing"] = timing_section(name, cfg, backbone, head, feats, args)
    result["bench_seconds"] = time.perf_counter() - t0
    result["peak_rss_mb_after"] = peak_rss_mb()
    return result


def summary_lines(result: dict) -> list[str]:
    """A few human-readable lines: MACs, latencies and training-step time per preset."""
    lines = []
    for name, r in result["presets"].items():
        g = r["macs_per_image"]["gmacs"]
        backbone = "n/a" if g["backbone"] is None else f"{g['backbone']:.3f}"
        lines.append(
            f"[{name}] GMACs/image: backbone {backbone}, head {g['head_total']:.3f} "
            f"(flows+fusion {g['head_flows_and_fusion']:.3f}); head <= backbone: "
            f"{r['macs_per_image'].get('head_costs_no_more_than_backbone')}"
        )
        for key, row in r.get("timing", {}).items():
            if key.startswith("batch_"):
                ms = {k.removesuffix("_ms_per_image"): v for k, v in row.items() if k.endswith("_ms_per_image")}
                parts = [f"{k} {v:.1f} ms" for k, v in ms.items()]
                lines.append(f"[{name}] {key}: " + ", ".join(parts) + " per image")
        if "timing" in r:
            step = r["timing"]["train_step"]
            lines.append(f"[{name}] train step (batch {step['batch']}): {step['seconds']:.2f} s")
    lines.append(f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['environment']['threads']} threads")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["fast", "reference"], choices=sorted(config.PRESETS))
    ap.add_argument("--runs", type=int, default=3, help="timed runs per latency (batch 1 gets twice as many)")
    ap.add_argument("--train-runs", type=int, default=3, help="timed training steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--time-reference", action="store_true", help="also time the reference head (slow, GBs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the backbone under train.precision's autocast)")
    ap.add_argument("--batches", type=int, nargs="+", help="latency batch sizes (default: 1, 4, 16 for fast)")
    ap.add_argument("--random-backbone", action="store_true", help="random backbone weights (no download)")
    ap.add_argument("--out", default="benchmarks/results/inference.json")
    args = ap.parse_args()
    if args.runs < 1 or args.train_runs < 1:
        raise SystemExit("error: --runs and --train-runs must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result: dict = {
        "environment": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "runs": args.runs,
            "train_runs": args.train_runs,
            "seed": args.seed,
            "load_average_at_start": load_average(),
        },
        "presets": {},
    }
    # Fast first, so its peak RSS is not masked by the much larger reference head.
    for name in sorted(dict.fromkeys(args.preset), key=lambda n: n == "reference"):
        result["presets"][name] = bench_preset(name, args)
        print(f"{name}: done in {result['presets'][name]['bench_seconds']:.1f} s", flush=True)
    result["peak_rss_mb"] = peak_rss_mb()
    result["environment"]["load_average_at_end"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\n".join(summary_lines(result)))


if __name__ == "__main__":
    main()
