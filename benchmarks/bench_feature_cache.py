"""Epoch time with and without the feature cache (fast preset, demo set), and peak memory.

python benchmarks/bench_feature_cache.py [--images 64] [--out benchmarks/results/feature_cache.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from vqflow import config
from vqflow.data import ImageDataset, load_data
from vqflow.engine.build import build_backbone, build_detector, build_head
from vqflow.engine.features import extract_features
from vqflow.model.vqflow import vqflow_loss


def one_epoch(head, source, batch_size: int) -> float:
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    head.train()
    t0 = time.perf_counter()
    for idx in torch.randperm(len(source)).split(batch_size):
        if len(idx) < 2:
            continue
        loss = vqflow_loss(head(source.get(idx, torch.device("cpu"))))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/feature_cache.json")
    args = ap.parse_args()
    cfg = config.preset("fast")
    torch.manual_seed(0)
    records = load_data(["demo"]).train[: args.images]
    ds = ImageDataset(records, cfg.data.image_size)
    backbone = build_backbone(cfg, torch.device("cpu"))
    det = build_detector(cfg, backbone, build_head(cfg, backbone.channels)).eval()
    result = {"images": len(records), "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size}
    t0 = time.perf_counter()
    cached = extract_features(det.features, ds, cfg.data.image_size, torch.device("cpu"), mode="memory", quiet=True)
    result["extract_seconds"] = time.perf_counter() - t0
    channels = tuple(int(t.shape[1]) for t in cached.get(torch.arange(1), torch.device("cpu")))
    live = extract_features(det.features, ds, cfg.data.image_size, torch.device("cpu"), mode="off")
    for name, source in (("cached", cached), ("live", live)):
        torch.manual_seed(0)
        head = build_head(cfg, channels)
        one_epoch(head, source, cfg.train.batch_size)  # warm-up (codebook init)
        result[f"epoch_seconds_{name}"] = one_epoch(head, source, cfg.train.batch_size)
        result[f"images_per_second_{name}"] = len(records) / result[f"epoch_seconds_{name}"]
    result["speedup"] = result["epoch_seconds_live"] / result["epoch_seconds_cached"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
