"""Which image score separates normal from defective images best, and holds verdicts per class?

    # choose on development data: the calibration benchmark's dev draw of the demo generator,
    # and Fashion-MNIST training images that its fmnist runs did not train on (build_fmnist_dev)
    python benchmarks/image_score.py --runs runs/calibration/run_dev_s{0,1,2} --name dev
    python benchmarks/image_score.py --runs runs/calibration/run_fmnist_s{0,1,2} --name fmnist_dev \
        --test-data folder:runs/calibration/data_fmnist_dev/fmnist
    # the same for the Fashion-MNIST splits of benchmarks/peers.py (its IDX subset; here evens)
    python benchmarks/image_score.py --runs runs/peers/fmnist/64px_fmnist_train1000x10_testall_normal02468/vqflow_e20_s0 \
        --name fmnist_dev_02468 --build-fmnist-dev runs/peers/data/fmnist_train1000x10_testall \
        runs/image_score/data_fmnist_dev_02468 --fmnist-normal 0,2,4,6,8 \
        --test-data folder:runs/image_score/data_fmnist_dev_02468/fmnist
    # report on the test splits
    python benchmarks/image_score.py --runs runs/ablations/demo/ours_s{0,1,2} --name demo
    python benchmarks/image_score.py --runs runs/calibration/run_fmnist_s{0,1,2} --name fmnist

For each trained run, the detector's evidence is collected once per image (training normals,
held-out normals, test images; cached in WORKDIR) and every candidate image score is built from it:

- rel: today's score, the top-k mean of the blurred per-image relative map (max M - M);
- abs_topk / abs_mean: the top-k mean / the mean of the blurred absolute NLL map -M;
- nll: the image's exact NLL per dimension (latents and log-determinant), the flow's likelihood;
- gdist: how far the global vector lies from its concept prototype, |y - y_hat|;
- knn: the distance of the image's global feature (unit-length mean of f4) to its k-th nearest
  training normal's (a training normal's own entry left out): the global part of local_knn;
- abs_topk-nnK: abs_topk minus the mean abs_topk of the image's K nearest training normals by that
  global feature (own entry left out): the local part of local_knn (score.local_neighbours K);
- energy / flow_logdet / latent_logdet: the three parts of nll (the latents' 0.5 |u|^2, minus the
  flows' log-determinant, minus the concept-aware latent's log-determinant, each per dimension);
- abs@K/S: the absolute map's top-K mean at blur sigma S px (a sweep of both);
- sums of components, each standardised by the held-out normals (median, and the spread
  between their 5% and 95% quantiles); |c| counts component c two-sided, by its distance from
  the normals' median in either direction (a typicality test), pos(c) only above that median,
  w*c weighed by w; max(...) takes the largest standardised component instead of the sum; no
  test label enters any score.

Out: image AUROC per class (mean over classes and its per-seed values), and at the
calibrated thresholds (calibration.concept_thresholds, the quantile of score.threshold_quantile)
the worst class's false-alarm rate and the share of defects caught; with `--working-points Q ...`
also the default score's verdicts at other quantiles (how the working point was chosen).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

# A sibling in benchmarks/ (not a package): on sys.path when this file runs as a script.
import calibration
from vqflow.calibration import TAIL_FIT, TAIL_IMAGES
from vqflow.config import ScoreConfig

# The absolute NLL map's top-k mean at other fractions and blurs (fraction / blur sigma in px).
SWEEP = [f"abs@{k}/{sigma}" for sigma in (0, 2, 4, 8) for k in (0.001, 0.01, 0.03, 0.1)]
PARTS = ("energy", "flow_logdet", "latent_logdet")  # nll = their sum + a constant
COMPONENTS = ("rel", "abs_topk", "abs_mean", "nll", "gdist", "knn", *PARTS, *SWEEP)
KNN_K = 10  # the k-NN component's neighbour (score.knn_k)
NEIGHBOURS = (3, 5, 10)  # abs_topk-nnK: abs_topk minus the mean abs_topk of the K nearest training normals
DEFAULT = "abs_topk-nn3+knn"  # the candidate that score.image_score=local_knn computes (score.local_neighbours 3)
CANDIDATES: dict[str, tuple[str, ...]] = {
    "rel": ("rel",),
    "abs_topk": ("abs_topk",),
    "abs_mean": ("abs_mean",),
    "nll": ("nll",),
    "gdist": ("gdist",),
    "rel+abs_topk": ("rel", "abs_topk"),
    "rel+abs_mean": ("rel", "abs_mean"),
    "rel+nll": ("rel", "nll"),
    "rel+gdist": ("rel", "gdist"),
    "abs_topk+abs_mean": ("abs_topk", "abs_mean"),
    "abs_topk+nll": ("abs_topk", "nll"),
    "rel+abs_mean+gdist": ("rel", "abs_mean", "gdist"),
    "rel+nll+gdist": ("rel", "nll", "gdist"),
    "abs_topk+nll+gdist": ("abs_topk", "nll", "gdist"),
    "abs_topk+abs_mean+nll": ("abs_topk", "abs_mean", "nll"),
    "max(rel,abs_mean)": ("max", "rel", "abs_mean"),
    "max(rel,nll)": ("max", "rel", "nll"),
    "max(abs_topk,abs_mean)": ("max", "abs_topk", "abs_mean"),
    "max(abs_topk,nll)": ("max", "abs_topk", "nll"),
    **{f"{c}+nll": (c, "nll") for c in SWEEP},
    # nll's parts, and the flows' log-determinant as a typicality test
    "energy": ("energy",),
    "flow_logdet": ("flow_logdet",),
    "latent_logdet": ("latent_logdet",),
    "abs_topk+energy": ("abs_topk", "energy"),
    "abs_topk+|nll|": ("abs_topk", "|nll|"),
    "abs_topk+energy+|flow_logdet|": ("abs_topk", "energy", "|flow_logdet|"),
    "abs_topk+energy+latent_logdet+|flow_logdet|": ("abs_topk", "energy", "latent_logdet", "|flow_logdet|"),
    "abs_topk+nll+|flow_logdet|": ("abs_topk", "nll", "|flow_logdet|"),
    # the global feature's distance to its k-th nearest training normal (score.image_score=local_knn)
    "knn": ("knn",),
    "abs_topk+knn": ("abs_topk", "knn"),
    "abs_topk+nll+knn": ("abs_topk", "nll", "knn"),
    "abs_topk+energy+knn": ("abs_topk", "energy", "knn"),
    # the local part relative to the K nearest training normals' (by global feature; score.local_neighbours)
    **{f"abs_topk-nn{k}": (f"abs_topk-nn{k}",) for k in NEIGHBOURS},
    **{f"abs_topk-nn{k}+knn": (f"abs_topk-nn{k}", "knn") for k in NEIGHBOURS},
    # the two parts of local_knn joined otherwise: the larger of the two, or the k-NN part only
    # where it lies above the held-out normals' median (a local defect's global feature is typical)
    "max(abs_topk-nn3,knn)": ("max", "abs_topk-nn3", "knn"),
    "abs_topk-nn3+pos(knn)": ("abs_topk-nn3", "pos(knn)"),
    # or the k-NN part weighed less than the local one
    **{f"abs_topk-nn3+{w}*knn": ("abs_topk-nn3", f"{w}*knn") for w in (0.25, 0.5, 0.75)},
}


def evidence(run: Path, workdir: Path, test_data: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per part (train, val, test): every component, concept, class, label; cached as JSON.
    `test_data`: a data spec whose test split replaces the run's own (development data)."""
    tag = "" if test_data is None else "_" + "".join(ch if ch.isalnum() else "_" for ch in test_data)[-40:]
    cache = workdir / f"{run.name}{tag}_evidence_v5.json"
    if cache.exists():
        raw = json.loads(cache.read_text())
        return {part: {k: np.asarray(v) for k, v in d.items()} for part, d in raw.items()}
    from torch.utils.data import DataLoader

    from vqflow.data import ImageDataset, load_data
    from vqflow.data.sample import collate
    from vqflow.engine.build import load_run
    from vqflow.engine.calibrate import knn_bank
    from vqflow.engine.features import CachedFeatures
    from vqflow.engine.fit import split_validation
    from vqflow.model.scores import gaussian_blur, log_likelihood_maps, score_batch, topk_mean
    from vqflow.model.vqflow import nll_parts, nll_per_dim

    tr = load_run(run, "cpu")
    cfg, det = tr.cfg, tr.detector
    size = (cfg.data.image_size, cfg.data.image_size)
    splits = load_data(cfg.data.specs, cfg.data.classes, cfg.data.normal)
    train, val = split_validation(splits.train, cfg.data.val_fraction, cfg.train.seed)
    test = splits.test if test_data is None else load_data([test_data], None, None).test

    def backbone_pass(recs: list) -> tuple[CachedFeatures, list]:
        """One backbone pass over a part: its pooled features in memory, and per batch its images'
        paths, classes and labels."""
        loader = DataLoader(ImageDataset(recs, cfg.data.image_size), batch_size=16, collate_fn=collate)
        feats, batches = [], []
        with torch.no_grad():
            for batch in loader:
                feats.append(det.features(batch.image))
                batches.append((batch.path, batch.cls, batch.label))
        return CachedFeatures([torch.cat(level) for level in zip(*feats)]), batches

    cpu = torch.device("cpu")
    passes = {"train": backbone_pass(train)}  # the k-NN bank and the training part share one pass
    det.knn_bank = knn_bank(passes["train"][0], 16, cpu)
    det.knn_k, det.local_neighbours = KNN_K, max(NEIGHBOURS)  # knn_evidence's distance and neighbour rows
    out: dict[str, dict[str, np.ndarray]] = {}
    for part, recs in (("train", train), ("val", val), ("test", test)):
        rows: dict[str, list] = {k: [] for k in (*COMPONENTS, "neighbours", "concept", "cls", "label")}
        source, batches = passes.pop(part) if part in passes else backbone_pass(recs)
        start = 0
        with torch.no_grad():
            for paths, classes, labels in batches:
                feats = source.get(torch.arange(start, start + len(labels)), cpu)
                start += len(labels)
                distance, near = det.knn_evidence(feats[3], int(part == "train"))
                rows["knn"] += distance.tolist()
                rows["neighbours"] += near.tolist()
                head = det.head(feats)
                y, y_hat, concept, _ = det.head._concept(feats[3])
                loglik = log_likelihood_maps(head.u, size)
                rel = score_batch(loglik, det.image_map, det.pixel_map, det.topk, det.blur_sigma).score
                neg = gaussian_blur(-loglik.sum(1), det.blur_sigma)
                rows["rel"] += rel.tolist()
                rows["abs_topk"] += topk_mean(neg, det.topk).tolist()
                rows["abs_mean"] += neg.flatten(1).mean(1).tolist()
                rows["nll"] += nll_per_dim(head).tolist()
                for name, value in zip(PARTS, nll_parts(head)):
                    rows[name] += value.tolist()
                rows["gdist"] += (y - y_hat).norm(dim=1).tolist()
                for sigma in (0, 2, 4, 8):
                    blurred = gaussian_blur(-loglik.sum(1), sigma)
                    for k in (0.001, 0.01, 0.03, 0.1):
                        rows[f"abs@{k}/{sigma}"] += topk_mean(blurred, k).tolist()
                rows["concept"] += concept.tolist()
                rows["cls"] += [calibration._group(p, c) for p, c in zip(paths, classes)]
                rows["label"] += labels.tolist()
        out[part] = {k: np.asarray(v) for k, v in rows.items()}
        print(f"  {run.name} {part}: {len(recs)} images", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({p: {k: v.tolist() for k, v in d.items()} for p, d in out.items()}))
    return out


def training_indices(used: Path, images: np.ndarray) -> set[int]:
    """Indices into Fashion-MNIST's training `images` of the ones a run trained on: `used` holds
    either its PNG files (<garment>_<index>.png, benchmarks/calibration.py) or IDX files
    (peers.fmnist_subset, whose images are matched by content)."""
    idx = used / "train-images-idx3-ubyte"
    if not idx.exists():
        return {int(p.stem.split("_")[1]) for p in used.iterdir()}
    seen = {im.tobytes() for im in calibration._idx(idx)}
    return {i for i, im in enumerate(images) if im.tobytes() in seen}


def build_fmnist_dev(
    used: Path, root: Path, normal: tuple[int, ...] = (0, 1, 2, 3, 4), per_class: int = 300, seed: int = 7
) -> None:
    """Development data for Fashion-MNIST: `per_class` images of each garment from the training
    split that the runs did not train on (`used`: see training_indices), the `normal` garments
    as test/good and the others as anomalies, in benchmarks/calibration.py's one-folder layout."""
    from PIL import Image

    base = Path(calibration.FMNIST)
    images = calibration._idx(base / "train-images-idx3-ubyte.gz")
    labels = calibration._idx(base / "train-labels-idx1-ubyte.gz")
    taken = training_indices(used, images)
    rng = np.random.default_rng(seed)
    for g, name in enumerate(calibration.GARMENTS):
        pool = np.array([i for i in np.flatnonzero(labels == g) if i not in taken])
        folder = root / "fmnist" / "test" / ("good" if g in normal else name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in rng.choice(pool, per_class, replace=False):
            Image.fromarray(images[i]).save(folder / f"{name}_{i:05d}.png")
    (root / "fmnist" / "train" / "good").mkdir(parents=True, exist_ok=True)  # the loader wants one
    Image.fromarray(images[0]).save(root / "fmnist" / "train" / "good" / "unused_00000.png")


def component(ev: dict[str, dict[str, np.ndarray]], part: str, name: str) -> np.ndarray:
    """One evidence component of a part; "abs_topk-nnK" is abs_topk minus the mean abs_topk of
    the image's K nearest training normals (a training image's own entry left out)."""
    if "-nn" not in name:
        return ev[part][name]
    base, k = name.split("-nn")
    return ev[part][base] - ev["train"][base][ev[part]["neighbours"][:, : int(k)]].mean(1)


def combined(ev: dict[str, dict[str, np.ndarray]], parts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The candidate's score per part: its components standardised by the held-out normals, then
    summed (or, for ("max", ...), their maximum); a component "|c|" counts as |z|, "pos(c)" as
    max(z, 0), "w*c" as w z."""
    from vqflow.calibration import standardisation

    ref = "val" if len(ev["val"]["rel"]) else "train"
    use_max = parts[0] == "max"
    names = list(parts[1:] if use_max else parts)
    weight = np.array([float(n.split("*")[0]) if "*" in n else 1.0 for n in names])
    names = [n.split("*")[-1] for n in names]
    two_sided = np.array([n.startswith("|") for n in names])
    positive = np.array([n.startswith("pos(") for n in names])
    names = [n.strip("|").removeprefix("pos(").removesuffix(")") for n in names]
    center, scale = standardisation(np.stack([component(ev, ref, c) for c in names], 1))  # as calibrate does
    out = {}
    for part in ev:
        z = (np.stack([component(ev, part, c) for c in names], 1) - center) / scale
        z = np.where(two_sided, np.abs(z), z)
        z = np.where(positive, np.maximum(z, 0.0), z)
        z = z * weight
        out[part] = z.max(1) if use_max else z.sum(1)
    return out


def judge(
    ev: dict[str, dict[str, np.ndarray]],
    score: dict[str, np.ndarray],
    quantile: float,
    prior: float,
    tail_images: int,
    tail_fit: int = TAIL_FIT,
) -> dict:
    """Image AUROC per class, and per-class false alarms / defects caught at the calibrated thresholds."""
    from sklearn.metrics import roc_auc_score

    from vqflow.calibration import concept_thresholds

    tr, va, te = ev["train"], ev["val"], ev["test"]
    val_score, val_concept = (score["val"], va["concept"]) if len(va["rel"]) else (score["train"], tr["concept"])
    glob, per = concept_thresholds(
        score["train"], tr["concept"], val_score, val_concept, quantile, prior, tail_images, tail_fit
    )
    thr = np.array([per.get(int(c), glob) for c in te["concept"]])
    flagged = score["test"] > thr
    auroc, fa = {}, {}
    for cls in sorted(set(te["cls"][te["label"] == 0])):
        normal = (te["cls"] == cls) & (te["label"] == 0)
        fa[cls] = float(flagged[normal].mean())
        members = te["cls"] == cls
        if len(set(te["label"][members])) == 2:
            auroc[cls] = float(roc_auc_score(te["label"][members], score["test"][members]))
    if not auroc:  # Fashion-MNIST: one normal pool, anomalies are the other garments
        auroc["all"] = float(roc_auc_score(te["label"], score["test"]))
    bad = te["label"] == 1
    return {
        "auroc": 100 * float(np.mean(list(auroc.values()))),
        "auroc_per_class": {k: round(100 * v, 1) for k, v in auroc.items()},
        "worst_false_alarms": 100 * max(fa.values()),
        "all_false_alarms": 100 * float(flagged[te["label"] == 0].mean()),
        "false_alarms_per_class": {k: round(100 * v, 1) for k, v in fa.items()},
        "caught": 100 * float(flagged[bad].mean()),
    }


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def judge_runs(
    per_run: dict, parts: tuple[str, ...], quantile: float, prior: float, tail_images: int, tail_fit: int = TAIL_FIT
) -> dict:
    """One candidate judged on every run: the runs' results and each number's mean (min..max)."""
    judged = [judge(ev, combined(ev, parts), quantile, prior, tail_images, tail_fit) for ev in per_run.values()]
    keys = ("auroc", "worst_false_alarms", "all_false_alarms", "caught")
    return {"per_run": judged, **{k: spread([j[k] for j in judged]) for k in keys}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True, help="trained run folders (one per seed)")
    ap.add_argument("--name", required=True, help="name of the data set, for the results file")
    ap.add_argument("--workdir", type=Path, default=Path("runs/image_score"), help="evidence cache")
    ap.add_argument("--test-data", help="a data spec whose test split replaces the runs' own (development data)")
    ap.add_argument(
        "--build-fmnist-dev",
        nargs=2,
        type=Path,
        metavar=("TRAIN_DIR", "OUT"),
        help="first write the Fashion-MNIST development set (build_fmnist_dev) from the runs' training "
        "images (a PNG folder, or a peers.py IDX subset)",
    )
    ap.add_argument(
        "--fmnist-normal",
        default="0,1,2,3,4",
        help="the normal garments of that development set, as the runs' --normal (default 0,1,2,3,4)",
    )
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--quantile", type=float, default=ScoreConfig.threshold_quantile, help="score.threshold_quantile")
    ap.add_argument(
        "--working-points",
        type=float,
        nargs="+",
        default=[],
        metavar="Q",
        help=f"also judge the default score ({DEFAULT}) at these threshold quantiles: a second table",
    )
    ap.add_argument("--prior", type=float, default=20.0)
    ap.add_argument(
        "--tail-images",
        type=int,
        default=TAIL_IMAGES,
        help="training normals a concept needs before its own tail bounds its threshold (0: pooled margin only)",
    )
    ap.add_argument(
        "--tail-fit",
        type=int,
        default=TAIL_FIT,
        help="largest values the thresholds' exponential tail is fitted to (0: numpy's linear quantile)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.build_fmnist_dev and not args.build_fmnist_dev[1].exists():
        build_fmnist_dev(*args.build_fmnist_dev, tuple(int(g) for g in args.fmnist_normal.split(",")))
    per_run = {run.name: evidence(run, args.workdir, args.test_data) for run in args.runs}
    table = {}
    for name, parts in CANDIDATES.items():
        table[name] = judge_runs(per_run, parts, args.quantile, args.prior, args.tail_images, args.tail_fit)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"# Image scores on {args.name} (benchmarks/image_score.py)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ",
        f"Machine: {platform.platform()}, torch {torch.__version__}  ",
        f"Runs (one per seed): {', '.join(str(r) for r in args.runs)}  ",
        f"Thresholds: calibration.concept_thresholds, quantile {args.quantile}, prior {args.prior}, "
        f"tail images {args.tail_images}, tail fit {args.tail_fit}",
        "",
        "Mean (min..max) over the runs, in %:",
        "",
        "| score | image AUROC (class mean) | worst class false alarms | defects caught |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['auroc']} | {v['worst_false_alarms']} | {v['caught']} |" for k, v in table.items()]
    working = {
        str(q): judge_runs(per_run, CANDIDATES[DEFAULT], q, args.prior, args.tail_images, args.tail_fit)
        for q in args.working_points
    }
    if working:
        lines += [
            "",
            f"The default score ({DEFAULT}) at other threshold quantiles (score.threshold_quantile), %:",
            "",
            "| quantile | worst class false alarms | all normals' false alarms | defects caught |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {q} | {v['worst_false_alarms']} | {v['all_false_alarms']} | {v['caught']} |" for q, v in working.items()
        ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"image_score_{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.results / f"image_score_{args.name}.json").write_text(
        json.dumps(
            {"command": command, "runs": [str(r) for r in args.runs], "table": table, "working_points": working},
            indent=1,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
