"""Training: one model on the union of all normal training images, no class labels."""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from vqflow.atomic import atomic_write_text
from vqflow.config import Config, save_yaml
from vqflow.data import ImageDataset, load_data
from vqflow.data.sample import Record
from vqflow.engine.build import (
    build_backbone,
    build_detector,
    build_head,
    inference_batch_size,
    resolve_device,
    seed_everything,
    use_deterministic,
)
from vqflow.engine.calibrate import calibrate
from vqflow.engine.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint
from vqflow.engine.distributed import DistContext, init_distributed, shutdown
from vqflow.engine.features import FeatureSource, extract_features
from vqflow.engine.progress import progress, say, warn
from vqflow.errors import VQFlowError
from vqflow.model.detector import Detector
from vqflow.model.vqflow import VQFlow, nll_per_dim, vqflow_loss
from vqflow.runlock import hold_run_folder

# Divergence: a step's loss above first + DIVERGENCE_FACTOR * max(|first|, 1), `first` being the
# fit's first step loss. Healthy runs stay below their first loss (tiny run: 30 -> 19 in two
# epochs); train.lr=10 takes it from 30 to 3e10 in the first epoch and 1e28 later, all finite.
DIVERGENCE_FACTOR = 100.0


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM during fit: a resumable checkpoint was saved."""

    def __init__(self, checkpoint: Path, signum: int):
        super().__init__(f"interrupted; checkpoint saved to {checkpoint}; continue with --resume")
        self.checkpoint, self.signum = checkpoint, signum


def split_validation(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out a seeded fraction of the training normals (per class, so every class is seen)."""
    if fraction <= 0:
        return records, []
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_class: dict[str, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.cls, []).append(r)
    for cls in sorted(by_class):
        recs = by_class[cls]
        k = int(round(fraction * len(recs))) if len(recs) >= 4 else 0
        chosen = set(rng.choice(len(recs), size=k, replace=False).tolist()) if k else set()
        for i, r in enumerate(recs):
            (val if i in chosen else train).append(r)
    return train, val


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[torch.Tensor]:
    """This process's batches of one epoch: a seeded permutation, sharded across processes.

    A last batch of one image is dropped (BatchNorm needs two).
    """
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // ctx.world
    perm = perm[ctx.rank * per_rank : (ctx.rank + 1) * per_rank] if ctx.enabled else perm
    batches = list(perm.split(batch_size))
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches


def lr_factor(epoch: int, cfg: Config) -> float:
    """Linear warm-up from warmup_start to 1 over warmup_epochs, then constant (the reference)
    or a cosine decay that reaches 0 one epoch after the last, so the last epoch still learns."""
    t = cfg.train
    if epoch < t.warmup_epochs:
        return t.warmup_start + (1 - t.warmup_start) * epoch / t.warmup_epochs
    if t.schedule == "constant":
        return 1.0
    decay_epochs = max(1, t.epochs - t.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * (epoch - t.warmup_epochs) / decay_epochs))


@contextmanager
def stop_on_signals(raise_as: Callable[[int], BaseException] | None = None) -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (flag["signum"]).

    With `raise_as`, raise raise_as(signum) at once instead, unless flag["defer"] is set then
    (a step that must not be cut; the flag still records the signal): for work that has
    nothing to save, where waiting for the next check would only delay the stop.
    """
    flag: dict = {"signum": None, "defer": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):  # noqa: ANN001
        flag["signum"] = signum
        if raise_as is not None and not flag["defer"]:
            raise raise_as(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def mean_nll(head: VQFlow, source: FeatureSource, batch_size: int, device: torch.device) -> float:
    """Mean NLL (nats/dim) of a feature source, the head in eval mode."""
    head.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for idx in torch.arange(len(source)).split(batch_size):
            nll = nll_per_dim(head(source.get(idx, device)))
            total, n = total + float(nll.sum()), n + len(idx)
    return total / max(n, 1)


def fit(cfg: Config, out: str | Path, resume: bool = False, quiet: bool = False) -> Path:
    """Train a model as `cfg` says, writing the run folder `out`; returns it."""
    out = Path(out)
    device = resolve_device(cfg.train.device)
    ctx = init_distributed(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{ctx.local_rank}")
    quiet = quiet or not ctx.is_main
    try:
        # Only the main rank writes the run's files, so only it locks the folder. The other ranks
        # start once it holds it; when it is refused they wait, idle, until torchrun ends them.
        advice = "wait for it to finish or choose another --out"
        with hold_run_folder(out, "fit", advice) if ctx.is_main else nullcontext():
            ctx.barrier()
            return _fit(cfg, out, resume, quiet, device, ctx)
    finally:
        shutdown(ctx)


def _fit(cfg: Config, out: Path, resume: bool, quiet: bool, device: torch.device, ctx: DistContext) -> Path:
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.pt"
    payload = None
    if resume:
        payload = load_checkpoint(last, require=RESUME_KEYS)
        # a key that an earlier version did not save held its dataclass default then
        sections = {sec: values for sec, values in Config().to_dict().items() if isinstance(values, dict)}
        saved = {sec: {**values, **payload["config"].get(sec, {})} for sec, values in sections.items()}
        now = cfg.to_dict()
        free = {
            "train.epochs",
            "train.device",
            "train.deterministic",
            "train.precision",
            "train.feature_cache",
            "train.cache_memory_gb",
            "data.num_workers",
        }
        differ = [
            f"{sec}.{k}"
            for sec in ("model", "data", "train")
            for k in now[sec]
            if f"{sec}.{k}" not in free and saved[sec].get(k) != now[sec][k]
        ]
        if differ:
            raise VQFlowError(
                f"--resume: {', '.join(differ)} differ from the config saved in {last}; resume with the same "
                "options (--epochs and --device may change)"
            )
        if cfg.train.schedule == "cosine" and saved["train"]["epochs"] != cfg.train.epochs:
            raise VQFlowError(
                f"--resume: train.schedule=cosine decays over the {saved['train']['epochs']} epochs saved in {last}; "
                f"resume with --epochs {saved['train']['epochs']}, or fit a new run for {cfg.train.epochs}"
            )
    else:
        artefacts = [ckpt_dir / "last.pt", ckpt_dir / "final.pt", ckpt_dir / "best.pt", out / "train_log.jsonl"]
        found = [p.name for p in artefacts if p.exists()]
        if found:
            raise VQFlowError(
                f"{out} already holds a trained run ({', '.join(found)}); continue it with --resume or choose another --out"
            )

    use_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    train_recs, val_recs = split_validation(splits.train, cfg.data.val_fraction, cfg.train.seed)
    if len(train_recs) < 2:
        raise VQFlowError(f"only {len(train_recs)} training image(s) in {', '.join(cfg.data.specs)}; need at least 2")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        say(
            f"training on {len(train_recs)} normal images ({len(val_recs)} held out) of "
            f"{len({r.cls for r in splits.train})} classes, device {device}",
            quiet,
        )

    backbone = build_backbone(cfg, device)
    seed_everything(cfg.train.seed)
    det = build_detector(cfg, backbone, build_head(cfg, backbone.channels).to(device))
    size = cfg.data.image_size
    common = dict(
        size=size,
        device=device,
        mode=cfg.train.feature_cache,
        memory_gb=cfg.train.cache_memory_gb,
        batch_size=inference_batch_size(cfg, device),
        num_workers=cfg.data.num_workers,
        quiet=quiet,
    )
    cache_dir = out / f".feature_cache_rank{ctx.rank}"
    train_src = extract_features(
        det.features, ImageDataset(train_recs, size), folder=cache_dir / "train", desc="train features", **common
    )
    val_src = (
        extract_features(
            det.features, ImageDataset(val_recs, size), folder=cache_dir / "val", desc="val features", **common
        )
        if val_recs
        else None
    )
    try:
        _train(cfg, out, payload, quiet, device, ctx, det, train_src, val_src, [r.cls for r in train_recs])
    finally:
        train_src.close()
        if val_src is not None:
            val_src.close()
        shutil.rmtree(cache_dir, ignore_errors=True)
    ctx.barrier()
    return out


def _train(
    cfg: Config,
    out: Path,
    payload: dict | None,
    quiet: bool,
    device: torch.device,
    ctx: DistContext,
    det: Detector,
    train_src: FeatureSource,
    val_src: FeatureSource | None,
    train_classes: list[str],
) -> None:
    """Epochs, per-epoch checkpoints and log, then the final model with its calibration."""
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.pt"
    head = det.head
    channels = head.feature_channels
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.train.lr)
    start_epoch, skip_steps, history, best = 0, 0, [], {"val_nll": math.inf, "epoch": None}
    if payload is not None:
        head.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        start_epoch, skip_steps = payload["epoch"], payload["step"]
        history, best = payload["history"], payload["best"]
        torch.set_rng_state(payload["rng"])
        head.set_random_states(payload["vq_rng"])
        say(f"resuming at epoch {start_epoch + 1}, step {skip_steps}", quiet)
    model = DistributedDataParallel(head) if ctx.enabled else head

    def state(epoch: int, step: int) -> dict:
        return {
            "config": cfg.to_dict(),
            "feature_channels": list(channels),
            "epoch": epoch,
            "step": step,
            "model": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "vq_rng": head.random_states(),
            "history": history,
            "best": best,
        }

    log_path = out / "train_log.jsonl"
    if ctx.is_main:
        remove_stale_temporaries(ckpt_dir)
        if payload is not None:
            truncate_log(log_path, start_epoch)
    epochs = cfg.train.epochs
    watch = DivergenceWatch(cfg.train.lr, enabled=ctx.is_main)
    with stop_on_signals() as flag:
        for epoch in range(start_epoch, epochs):
            for g in optimizer.param_groups:
                g["lr"] = cfg.train.lr * lr_factor(epoch, cfg)
            batches = epoch_batches(len(train_src), cfg.train.batch_size, cfg.train.seed, epoch, ctx)
            head.train()
            if skip_steps == 0:
                head.on_epoch_start()
            t0, losses = time.time(), []
            bar = progress(total=len(batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", quiet=quiet)
            bar.update(skip_steps)
            for step in range(skip_steps, len(batches)):
                loss = vqflow_loss(model(train_src.get(batches[step], device)), cfg.model.commitment_weight)
                # A NaN/inf loss stops the fit: one such step turns the weights and Adam's moments
                # into NaN for good, so every later epoch would be wasted time ending in a model
                # that scores NaN. A finite but exploding loss only warns (DivergenceWatch): it
                # may recover, and a long run is not thrown away on a guess.
                if not torch.isfinite(loss):
                    bar.close()
                    raise VQFlowError(
                        f"non-finite loss at epoch {epoch + 1}, step {step + 1}; training stopped, the last good "
                        f"checkpoint is kept in {ckpt_dir}; fit again with a lower learning rate "
                        f"(--set train.lr={cfg.train.lr / 10:g})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.train.grad_clip)
                optimizer.step()
                losses.append(loss.item())
                watch.check(losses[-1], epoch, step)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update(1)
                if flag["signum"] is not None:
                    bar.close()
                    if ctx.is_main:
                        save_checkpoint(last, state(epoch, step + 1))
                    raise TrainingInterrupted(last, flag["signum"])
            bar.close()
            skip_steps = 0
            head.on_epoch_end()
            record = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)) if losses else None,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 3),
                "codebooks": head.codebook_usage(),
            }
            if val_src is not None:
                record["val_nll"] = mean_nll(head, val_src, cfg.train.batch_size, device)
                if record["val_nll"] < best["val_nll"]:
                    best = {"val_nll": record["val_nll"], "epoch": epoch + 1}
                    if ctx.is_main and cfg.train.select == "val":
                        save_checkpoint(ckpt_dir / "best.pt", state(epoch + 1, 0))
            history.append(record)
            if ctx.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                save_checkpoint(last, state(epoch + 1, 0))
                say(_epoch_line(record), quiet)

    if ctx.is_main:
        if cfg.train.select == "val" and (ckpt_dir / "best.pt").exists():
            chosen = load_checkpoint(ckpt_dir / "best.pt")
            head.load_state_dict(chosen["model"])
        final = state(epochs, 0)
        final["chosen_epoch"] = best["epoch"] if cfg.train.select == "val" and best["epoch"] else epochs
        sc = cfg.score
        final["calibration"] = calibrate(
            det,
            train_src,
            val_src,
            train_classes,
            (cfg.data.image_size, cfg.data.image_size),
            sc.threshold_quantile,
            sc.concept_prior,
            cfg.train.batch_size,
            device,
        ).to_dict()
        if det.knn_bank.numel():
            final["knn_bank"] = det.knn_bank.cpu()
        if det.knn_local.numel():
            final["knn_local"] = det.knn_local.cpu()
        save_checkpoint(ckpt_dir / "final.pt", final)
        say(f"model saved to {ckpt_dir / 'final.pt'} (epoch {final['chosen_epoch']})", quiet)


class DivergenceWatch:
    """Warns once, in one line, when the training loss climbs far above the fit's first loss:
    a learning rate too high, which a finite loss never reports by itself."""

    def __init__(self, lr: float, enabled: bool = True) -> None:
        self.lr, self.first, self.warned = lr, None, not enabled

    def check(self, loss: float, epoch: int, step: int) -> None:
        """Look at one step's loss (epoch and step counted from 0)."""
        if self.first is None:
            self.first = loss
            return
        if self.warned or loss <= self.first + DIVERGENCE_FACTOR * max(abs(self.first), 1.0):
            return
        self.warned = True
        warn(
            f"the training loss is diverging ({loss:.3g} at epoch {epoch + 1}, step {step + 1}; it started at "
            f"{self.first:.3g}): train.lr={self.lr:g} is likely too high; fit again with a lower one, "
            f"e.g. --set train.lr={self.lr / 10:g}"
        )


def truncate_log(log_path: Path, epochs: int) -> None:
    """Keep the log's records of the first `epochs` epochs: a kill between a log write and
    the checkpoint write must not leave an epoch logged twice after --resume."""
    if not log_path.exists():
        return
    lines = log_path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= epochs]
    if len(kept) != len(lines):
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))


def remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Delete checkpoint temporaries a killed process left behind (.last.pt.*.tmp...)."""
    for tmp in ckpt_dir.glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def _epoch_line(record: dict) -> str:
    books = " ".join(f"{k}:{v['used']}/{v['codes']}(ppl {v['perplexity']:.1f})" for k, v in record["codebooks"].items())
    val = f" val_nll {record['val_nll']:.4f}" if "val_nll" in record else ""
    loss = f"{record['loss']:.4f}" if record["loss"] is not None else "-"
    return f"epoch {record['epoch']}: loss {loss}{val} ({record['seconds']:.1f}s) codes {books}"
