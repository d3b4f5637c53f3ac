"""The run's training curve, read from train_log.jsonl (one JSON object per epoch).

Read leniently: a report must not fail because of a damaged or older log. Lines that are not
JSON objects with a numeric "epoch" are skipped (and counted); a missing value is NaN.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TrainLog:
    """Per-epoch values of a fit, sorted by epoch (a resumed epoch's latest line wins)."""

    epochs: np.ndarray  # (E,) int
    loss: np.ndarray  # (E,) float, NaN where missing
    val_nll: np.ndarray  # (E,) float, NaN where missing
    usage: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # book -> (used, codes), NaN gaps
    skipped: int = 0  # lines that could not be read


def _number(value: object) -> float:
    """A finite float, else NaN (None, strings, booleans and infinities are not values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def _records(lines: list[str]) -> tuple[dict[int, dict], int]:
    """The last record per epoch, and how many non-empty lines were unreadable."""
    by_epoch: dict[int, dict] = {}
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        epoch = _number(record.get("epoch")) if isinstance(record, dict) else math.nan
        if math.isnan(epoch):
            skipped += 1
            continue
        by_epoch[int(epoch)] = record
    return by_epoch, skipped


def _usage(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per codebook (in order of first appearance): used and total codes per record."""
    books: dict[str, None] = {}
    for record in records:
        if isinstance(record.get("codebooks"), dict):
            books.update(dict.fromkeys(str(k) for k in record["codebooks"]))
    usage = {}
    for book in books:
        entries = [
            (r.get("codebooks") or {}).get(book) if isinstance(r.get("codebooks"), dict) else None for r in records
        ]
        used = np.array([_number(e.get("used")) if isinstance(e, dict) else math.nan for e in entries])
        codes = np.array([_number(e.get("codes")) if isinstance(e, dict) else math.nan for e in entries])
        if np.isfinite(used).any():
            usage[book] = (used, codes)
    return usage


def read_train_log(path: Path | None) -> TrainLog | None:
    """The log at `path`, or None when it is missing, unreadable or holds no epoch."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    by_epoch, skipped = _records(lines)
    if not by_epoch:
        return None
    epochs = sorted(by_epoch)
    records = [by_epoch[e] for e in epochs]
    return TrainLog(
        epochs=np.asarray(epochs, dtype=np.int64),
        loss=np.array([_number(r.get("loss")) for r in records]),
        val_nll=np.array([_number(r.get("val_nll")) for r in records]),
        usage=_usage(records),
        skipped=skipped,
    )
