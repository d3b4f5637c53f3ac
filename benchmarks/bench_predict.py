"""Side-by-side CPU speed of `vqflow predict`, its model, ONNX Runtime and anomalib FastFlow.

Why: the speed goals are ratios measured in one run on one machine, because absolute
images/s differ ~2x between machines of this kind (and the 2-core machine is shared):

* the whole predict pipeline (start-up excluded) against the backbone's forward alone;
* the detector's forward against anomalib FastFlow's forward on the same Lite0 backbone;
* eager torch against ONNX Runtime at batch 1 and 16.

What one run does:

1. trains the fast preset for one epoch on the embedded demo set (speed does not depend on
   training length) and exports it to ONNX (or reuses --run / --onnx);
2. builds two image folders from the demo test images: the 256 px PNGs as they are, and the
   same images as 1024x768 JPEGs (heatmaps are written at the input's resolution);
3. model-only images/s at batch 1, 4 (vqflow's CPU default) and 16 on random inputs:
   backbone alone, head + scores alone, the detector's forward, ONNX Runtime (as vqflow runs
   it, and with non-spinning threads), and FastFlow. Rounds are interleaved (one call of each
   runner per round); the median and the best round are kept. FastFlow runs in another
   virtualenv (anomalib and its torchvision) as a subprocess driven call by call over a pipe,
   so that it is interleaved with the rest too;
4. the predict pipeline in-process (`run_predict`, model loading excluded), torch and ONNX,
   heatmaps on and off, each run bracketed by backbone-alone probes so that its ratio to the
   backbone is side by side even when the machine's speed drifts; the CPU that other
   processes used meanwhile is recorded with every timing;
5. each pipeline stage alone, per image (decode + preprocess, heatmap writing), to show what
   limits predict.

    python benchmarks/bench_predict.py --images 300 --out benchmarks/results/predict.json

FastFlow needs anomalib beside the same CPU torch, in a virtualenv of its own (default
/work/.venv-bench, or --fastflow-python); without it FastFlow is recorded as not run:

    python -m venv /work/.venv-bench
    /work/.venv-bench/bin/pip install torch==2.13.0          # the local CPU build
    /work/.venv-bench/bin/pip install anomalib -c <(echo torch==2.13.0)

PyPI's torchvision there is a CUDA build whose compiled ops do not load beside a CPU torch;
the worker works around that (`stub_torchvision_ops`).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (as in vqflow.cli); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import datetime
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SIZE = 256
BATCHES = (1, 4, 16)
SEED = 0
LARGE = (1024, 768)  # (width, height) of the second image set
FASTFLOW_PYTHON = "/work/.venv-bench/bin/python"
# Lite0 stages FastFlow uses (its CNN recipe: the stride 4, 8 and 16 maps), as indices into f1..f4.
FASTFLOW_STAGES = 3
PROBE_IMAGES = 64  # images per probe of a model alone, around each predict run

Runner = Callable[[int], float]  # batch size -> seconds of one forward at that batch


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def random_inputs(batches: tuple[int, ...] = BATCHES) -> dict[int, torch.Tensor]:
    """Seeded N(0, 1) model inputs (B, 3, SIZE, SIZE), the same in every process."""
    gen = torch.Generator().manual_seed(SEED)
    full = torch.randn(max(batches), 3, SIZE, SIZE, generator=gen)
    return {b: full[:b].contiguous() for b in batches}


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class ForeignCpu:
    """CPU cores that other processes (not this one, nor `pids`) kept busy since `start()`,
    from /proc (Linux): the machine is shared, and this says how much each timing was disturbed."""

    def __init__(self, pids: tuple[int, ...] = ()) -> None:
        self.pids = pids
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _busy_seconds() -> float:
        """Non-idle CPU seconds of the whole machine since boot."""
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")

    def _own_seconds(self) -> float:
        """CPU seconds of this process (all threads) and of `pids`."""
        own = time.process_time()
        for pid in self.pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                own += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return own

    def start(self) -> None:
        with contextlib.suppress(OSError):
            self._start = (time.perf_counter(), self._busy_seconds(), self._own_seconds())

    def stop(self) -> float | None:
        """Mean number of cores other processes used since `start()` (None without /proc)."""
        if self._start is None:
            return None
        wall, busy, own = self._start
        wall = time.perf_counter() - wall
        foreign = (self._busy_seconds() - busy) - (self._own_seconds() - own)
        return round(max(0.0, foreign) / wall, 2) if wall > 0 else None


# ---------------------------------------------------------------------------------------------
# FastFlow worker: runs in the anomalib virtualenv, imports no vqflow at module level
# ---------------------------------------------------------------------------------------------


def stub_torchvision_ops() -> str:
    """Let a CUDA build of torchvision import beside a CPU torch, without its compiled ops.

    PyPI's torchvision wheel links libc10_cuda.so, so its _C.so does not load here; its import
    then fails registering fake kernels for torchvision::nms and ::qnms, the only two it
    registers unconditionally. Defining those two schemas lets the import finish; FastFlow
    uses none of torchvision's ops. Returns a note for the results."""
    try:
        import torchvision

        return "torchvision imported as is"
    except RuntimeError as exc:
        first_error = str(exc).strip().splitlines()[-1]
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    stub_torchvision_ops.lib = lib  # type: ignore[attr-defined]  # keep the definitions alive
    import torchvision

    return (
        f"torchvision {torchvision.__version__} failed to import ({first_error}): its _C.so is a CUDA "
        "build; the schemas of torchvision::nms and ::qnms were defined so that the import finishes "
        "(FastFlow uses no torchvision op)"
    )


class FirstStages(torch.nn.Module):
    """vqflow's Lite0 as FastFlow's feature extractor: its first FASTFLOW_STAGES maps."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x)[:FASTFLOW_STAGES])


def build_fastflow(backbone: torch.nn.Module) -> torch.nn.Module:
    """anomalib's FastflowModel (defaults: 8 flow steps, hidden ratio 1, 3x3/1x1 alternating) on
    vqflow's Lite0 maps: its LayerNorms and flow blocks are rebuilt with anomalib's own
    `create_fast_flow_block` for Lite0's channels and strides (anomalib 2.x builds CNN
    FastFlow on timm resnet18 / wide_resnet50_2 only)."""
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

    model = FastflowModel(input_size=(SIZE, SIZE), backbone="resnet18", pre_trained=False)
    model.feature_extractor = FirstStages(backbone)
    channels = list(backbone.channels)[:FASTFLOW_STAGES]
    strides = list(backbone.strides)[:FASTFLOW_STAGES]
    dims = [[c, SIZE // s, SIZE // s] for c, s in zip(channels, strides)]
    model.norms = torch.nn.ModuleList(torch.nn.LayerNorm(d, elementwise_affine=True) for d in dims)
    model.fast_flow_blocks = torch.nn.ModuleList(
        create_fast_flow_block(input_dimensions=d, conv3x3_only=False, hidden_ratio=1.0, flow_steps=8) for d in dims
    )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def fastflow_worker(backbone_file: str, check_file: str) -> None:
    """Serve timed FastFlow forwards over stdin/stdout, one JSON line per request.

    Replies {"ready": ...} (or {"error": ...}) once, then answers each {"batch": B} with
    {"seconds": S} for one forward at batch B; stops at end of input."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of the imports go to stderr, not into the protocol

    def send(obj: dict) -> None:
        reply.write(json.dumps(obj) + "\n")

    try:
        note = stub_torchvision_ops()
        import anomalib

        backbone = torch.load(backbone_file, weights_only=False).eval()
        check = torch.load(check_file, weights_only=True)
        with torch.no_grad():
            diff = max(float((a - b).abs().max()) for a, b in zip(backbone(check["x"]), check["maps"]))
        model = build_fastflow(backbone)
        head = sum(p.numel() for m in (model.norms, model.fast_flow_blocks) for p in m.parameters())
        inputs = random_inputs()
        with torch.no_grad():
            out = model(inputs[1])
    except Exception as exc:  # noqa: BLE001  (any failure is a result to record, with its exact message)
        send({"error": f"{type(exc).__name__}: {exc}"})
        return
    send(
        {
            "ready": True,
            "anomalib": anomalib.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "torchvision_note": note,
            "backbone_max_abs_diff_vs_main_process": diff,
            "head_parameters": head,
            "output": {"anomaly_map": list(out.anomaly_map.shape), "pred_score": list(out.pred_score.shape)},
        }
    )
    for line in sys.stdin:
        x = inputs[int(json.loads(line)["batch"])]
        with torch.no_grad():
            seconds = timed(lambda x=x: model(x))
        send({"seconds": seconds})


# ---------------------------------------------------------------------------------------------
# Setup: a trained run, its ONNX export, the image folders
# ---------------------------------------------------------------------------------------------


def vqflow_cli(*args: str) -> float:
    """Run `python -m vqflow ARGS` (this interpreter); its wall seconds. Raises on failure."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vqflow", *args], check=True, cwd=REPO)
    return time.perf_counter() - start


def prepare_model(tmp: Path, run: str | None, onnx: str | None) -> tuple[Path, Path, dict]:
    """(run folder, ONNX file, setup notes): trained and exported here unless given."""
    notes: dict[str, Any] = {}
    if run is None:
        run = str(tmp / "run")
        notes["fit_seconds"] = round(vqflow_cli("fit", "--data", "demo", "--out", run, "--epochs", "1", "--quiet"), 1)
        notes["fit_command"] = f"vqflow fit --data demo --out {run} --epochs 1 --quiet"
    if onnx is None:
        onnx = str(tmp / "model.onnx")
        notes["export_seconds"] = round(vqflow_cli("export", "--run", run, "--out", onnx, "--quiet"), 1)
        notes["export_command"] = f"vqflow export --run {run} --out {onnx}"
    return Path(run), Path(onnx), notes


def demo_test_images() -> list[Path]:
    """The demo set's test images (built into the cache on first use)."""
    from vqflow.data import load_data

    return [Path(r.path) for r in load_data(["demo"]).test]


def make_image_sets(tmp: Path, count: int) -> dict[str, Path]:
    """Folders of `count` images: 'png256' (the demo PNGs, repeated as needed) and 'jpg1024'
    (the same images resized to 1024x768, JPEG quality 90)."""
    from PIL import Image

    sources = demo_test_images()
    folders = {"png256": tmp / "png256", "jpg1024": tmp / "jpg1024"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    large: dict[Path, Path] = {}
    for i in range(count):
        src = sources[i % len(sources)]
        stem = f"{i:04d}_{src.parent.parent.parent.name}_{src.parent.name}_{src.stem}"
        shutil.copyfile(src, folders["png256"] / f"{stem}.png")
        if src not in large:
            with Image.open(src) as img:
                img.convert("RGB").resize(LARGE, Image.Resampling.LANCZOS).save(
                    folders["jpg1024"] / f"{stem}.jpg", quality=90
                )
            large[src] = folders["jpg1024"] / f"{stem}.jpg"
        else:
            shutil.copyfile(large[src], folders["jpg1024"] / f"{stem}.jpg")
    return folders


def subset_folder(src: Path, dst: Path, n: int) -> Path:
    """A folder with the first `n` files of `src` (for warm-up runs)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir())[:n]:
        shutil.copyfile(f, dst / f.name)
    return dst


# ---------------------------------------------------------------------------------------------
# Model-only timing
# ---------------------------------------------------------------------------------------------


def torch_runner(fn: Callable[[torch.Tensor], object], inputs: dict[int, torch.Tensor]) -> Runner:
    """One no-grad call of `fn` on the batch-B input, timed."""

    def run(batch: int) -> float:
        with torch.no_grad():
            return timed(lambda: fn(inputs[batch]))

    return run


def head_runner(det: Any, inputs: dict[int, torch.Tensor]) -> Runner:
    """The detector without its backbone: head + scores + maps on precomputed pooled features."""
    with torch.no_grad():
        feats = {b: det.features(x) for b, x in inputs.items()}
    return torch_runner(lambda x: det.predict_features(feats[x.shape[0]], (SIZE, SIZE)), inputs)


def onnx_runner(inf: Any, inputs: dict[int, torch.Tensor]) -> Runner:
    """One OnnxInferencer.run on the batch-B input (as float32 numpy), timed."""
    arrays = {b: x.numpy() for b, x in inputs.items()}
    return lambda batch: timed(lambda: inf.run(arrays[batch]))


def nospin_inferencer(path: Path) -> Any:
    """An OnnxInferencer whose session's idle threads sleep instead of spinning
    (session.intra_op.allow_spinning=0): the ONNX counterpart of OMP_WAIT_POLICY=PASSIVE."""
    from vqflow.export.inferencer import OnnxInferencer

    return OnnxInferencer(path, spin=False)


def onnx_nospin_runner(path: Path, inputs: dict[int, torch.Tensor]) -> Runner:
    """onnx_runner on a nospin_inferencer."""
    return onnx_runner(nospin_inferencer(path), inputs)


class FastflowProcess:
    """The FastFlow worker in the anomalib virtualenv, as a Runner; `info` is its ready reply."""

    def __init__(self, python: str, tmp: Path, backbone: torch.nn.Module, log: Path) -> None:
        backbone_file, check_file = tmp / "lite0_backbone.pt", tmp / "lite0_check.pt"
        torch.save(backbone, backbone_file)
        x = random_inputs((2,))[2]
        with torch.no_grad():
            torch.save({"x": x, "maps": [m.clone() for m in backbone(x)]}, check_file)
        env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--fastflow-worker", str(backbone_file), str(check_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            return {"error": "worker exited: " + " | ".join(tail)}
        return json.loads(line)

    def __call__(self, batch: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"batch": batch}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "seconds" not in reply:
            raise RuntimeError(f"FastFlow worker: {reply}")
        return float(reply["seconds"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._stderr.close()


def time_interleaved(runners: dict[str, Runner], batch: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each runner at `batch`: `warmup` untimed calls each, then `rounds`
    rounds of one call of each runner."""
    for run in runners.values():
        for _ in range(warmup):
            run(batch)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(run(batch))
    return times


def model_only(
    runners: dict[str, Runner], batches: tuple[int, ...], rounds: int, warmup: int, foreign: ForeignCpu
) -> dict:
    """Images/s of every runner at every batch: median over rounds, and best round (the least
    disturbed on a shared machine), with the raw times and the other processes' CPU use."""
    out: dict[str, dict] = {}
    for batch in batches:
        foreign.start()
        times = time_interleaved(runners, batch, rounds, warmup)
        out[f"batch_{batch}"] = {
            "images_per_second": {k: round(batch / statistics.median(v), 2) for k, v in times.items()},
            "images_per_second_best": {k: round(batch / min(v), 2) for k, v in times.items()},
            "foreign_cpu_cores": foreign.stop(),
            "ms_per_batch_median": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()},
            "ms_per_batch_all": {k: [round(1000 * t, 1) for t in v] for k, v in times.items()},
        }
        ips = out[f"batch_{batch}"]["images_per_second"]
        print(f"  batch {batch:2d}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()) + " img/s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Predict pipeline timing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictCase:
    runtime: str  # "torch" (--engine torch) or "onnx_nospin" (predict's default where onnxruntime is installed)
    images: str  # "png256" or "jpg1024"
    heatmaps: bool
    batch: int

    @property
    def name(self) -> str:
        return f"{self.runtime}_{self.images}_{'heatmaps' if self.heatmaps else 'scores_only'}_b{self.batch}"


def predict_cases(default_batch: dict[str, int]) -> list[PredictCase]:
    """Torch and ONNX Runtime (as predict runs it: threads sleep when idle) on both image sets
    with heatmaps on and off at their default batches, and torch at batch 16 with heatmaps on
    the 256 px set."""
    cases = [
        PredictCase(rt, imgs, hm, default_batch[rt])
        for imgs in ("png256", "jpg1024")
        for hm in (True, False)
        for rt in ("torch", "onnx_nospin")
    ]
    return cases + [PredictCase("torch", "png256", True, 16)]


def probe(run: Runner, batch: int, images: int = PROBE_IMAGES) -> float:
    """Images/s of `run` at `batch` now, over `images` inputs back to back (as a pipeline feeds
    them): steadier than a few calls on a machine whose speed drifts."""
    calls = max(1, images // batch)
    return calls * batch / sum(run(batch) for _ in range(calls))


def backbone_probe(backbone: Runner) -> dict[int, float]:
    """Backbone-alone images/s at batch 4 and 16, measured now."""
    return {b: probe(backbone, b) for b in (4, 16)}


def time_predict(model: Any, folder: Path, out: Path, heatmaps: bool) -> float:
    """Wall seconds of run_predict over `folder` (model already loaded), output folder fresh."""
    from vqflow.engine.predict import run_predict

    shutil.rmtree(out, ignore_errors=True)
    seconds = timed(lambda: run_predict(model, [str(folder)], out, heatmaps=heatmaps, quiet=True))
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def predict_pipeline(
    models: dict[str, Any],
    alone: dict[str, Runner],
    folders: dict[str, Path],
    warm: dict[str, Path],
    tmp: Path,
    cases: list[PredictCase],
    backbone: Runner,
    rounds: int,
    count: int,
    foreign: ForeignCpu,
) -> dict:
    """Images/s of every case, its ratio to the backbone probes taken just before and after it,
    its ratio to its own model alone (`alone[runtime]` at the case's batch, probed after), and
    the CPU cores other processes used meanwhile."""
    for name, model in models.items():  # warm-up: oneDNN primitives, ORT arenas, imports
        for images in folders:
            time_predict(replace(model, batch_size=4), warm[images], tmp / "warm_out", heatmaps=True)
        print(f"  warmed up {name}", flush=True)
    results: dict[str, dict[str, list[float]]] = {
        c.name: {"ips": [], "r4": [], "r16": [], "rm": [], "foreign": []} for c in cases
    }
    before = backbone_probe(backbone)
    probes = [before]
    for r in range(rounds):
        for case in cases:
            model = replace(models[case.runtime], batch_size=case.batch)
            foreign.start()
            seconds = time_predict(model, folders[case.images], tmp / "predict_out", case.heatmaps)
            res = results[case.name]
            res["foreign"].append(foreign.stop() or 0.0)
            model_alone = probe(alone[case.runtime], case.batch)
            after = backbone_probe(backbone)
            ref = {b: (before[b] + after[b]) / 2 for b in before}
            probes.append(after)
            before = after
            ips = count / seconds
            res["ips"].append(ips)
            res["r4"].append(ips / ref[4])
            res["r16"].append(ips / ref[16])
            res["rm"].append(ips / model_alone)
            print(
                f"  round {r + 1} {case.name}: {ips:.2f} img/s, x{ips / ref[4]:.2f} of backbone b4 "
                f"({ref[4]:.1f}), x{ips / ref[16]:.2f} of b16 ({ref[16]:.1f}), x{ips / model_alone:.2f} of "
                f"its model alone ({model_alone:.1f}); other processes {res['foreign'][-1]:.2f} cores",
                flush=True,
            )
    pooled = {b: statistics.median(p[b] for p in probes) for b in (4, 16)}
    cases_out = {
        name: {
            "images_per_second": round(statistics.median(v["ips"]), 2),
            "over_backbone_b4": round(statistics.median(v["r4"]), 3),
            "over_backbone_b16": round(statistics.median(v["r16"]), 3),
            "over_backbone_b4_pooled": round(statistics.median(v["ips"]) / pooled[4], 3),
            "over_backbone_b16_pooled": round(statistics.median(v["ips"]) / pooled[16], 3),
            "over_own_model_alone": round(statistics.median(v["rm"]), 3),
            "images_per_second_all": [round(x, 2) for x in v["ips"]],
            "foreign_cpu_cores_all": v["foreign"],
        }
        for name, v in results.items()
    }
    return {
        "cases": cases_out,
        "backbone_probes_images_per_second": {f"batch_{b}": [round(p[b], 2) for p in probes] for b in (4, 16)},
    }


# ---------------------------------------------------------------------------------------------
# Stage costs: each pipeline stage alone, per image
# ---------------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds of `n` calls of `fn`."""
    return round(statistics.median(1000 * timed(fn) for _ in range(n)), 2)


def stage_costs(folders: dict[str, Path], torch_model: Any, tmp: Path, n: int = 16) -> dict:
    """Median ms per image of each pipeline stage alone, on this thread, for both image sets:
    decode + preprocess (`_load`), map resize to the input's size, and the heatmap writer
    (`_write`: overlay, colour bar, JPEG encode + atomic write), also split into its parts, with
    the PNG encode predict used before for comparison."""
    from PIL import Image

    from vqflow.engine.predict import _load, _write
    from vqflow.imageio import resize_map
    from vqflow.report.overlay import overlay, with_colorbar

    lo, hi = torch_model.calibration.map_range
    target = tmp / "stage_out" / "h.jpg"
    out: dict[str, dict] = {}
    for images, folder in folders.items():
        files = sorted(folder.iterdir())[:n]
        load_ms = [1000 * timed(partial(_load, f, torch_model)) for f in files]
        loaded = [_load(f, torch_model) for f in files[:4]]
        _, maps, _ = torch_model.run_batch(np.stack([x for _, _, x in loaded]))
        (w, h), rgb, _ = loaded[0]
        amap = resize_map(maps[0], w, h)
        blended = overlay(rgb, amap, vmin=lo, vmax=hi)
        image = Image.fromarray(with_colorbar(blended, lo, hi))
        out[images] = {
            "input_size_wh": [w, h],
            "decode_preprocess_ms": round(statistics.median(load_ms), 2),
            "resize_map_ms": median_ms(partial(resize_map, maps[0], w, h), n),
            "write_heatmap_ms": median_ms(partial(_write, {}, rgb, amap, torch_model.calibration, target, None), n),
            "of_which_overlay_ms": median_ms(partial(overlay, rgb, amap, vmin=lo, vmax=hi), n),
            "of_which_colorbar_ms": median_ms(partial(with_colorbar, blended, lo, hi), n),
            "of_which_jpeg_encode_ms": median_ms(
                lambda image=image: image.save(tmp / "stage.jpg", format="JPEG", quality=90, subsampling=0), n
            ),
            "png_encode_instead_ms": median_ms(
                lambda image=image: image.save(tmp / "stage.png", format="PNG", compress_level=1), n
            ),
        }
    shutil.rmtree(tmp / "stage_out", ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_info(ort_threads: int) -> dict:
    import onnxruntime

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_intra_op_threads": ort_threads or "default (one per physical core)",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo, or ''."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def ratios(model: dict, predict: dict, default_batch: dict[str, int], key: str = "images_per_second") -> dict:
    """The goal ratios from the measurements; model-only ones from `key` (median or best)."""

    def ips(batch: int, name: str) -> float | None:
        return model[f"batch_{batch}"][key].get(name)

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    out: dict[str, Any] = {}
    for b in BATCHES:
        out[f"detector_over_backbone_b{b}"] = div(ips(b, "detector"), ips(b, "backbone"))
        out[f"onnxruntime_over_torch_detector_b{b}"] = div(ips(b, "onnxruntime"), ips(b, "detector"))
        out[f"onnxruntime_nospin_over_torch_detector_b{b}"] = div(ips(b, "onnxruntime_nospin"), ips(b, "detector"))
        out[f"detector_over_fastflow_b{b}"] = div(ips(b, "detector"), ips(b, "fastflow"))
        out[f"detector_frozen_over_fastflow_b{b}"] = div(ips(b, "detector_frozen"), ips(b, "fastflow"))
        out[f"detector_frozen_over_detector_b{b}"] = div(ips(b, "detector_frozen"), ips(b, "detector"))
        out[f"head_time_over_backbone_time_b{b}"] = div(ips(b, "backbone"), ips(b, "head_and_scores"))
    for name, res in predict["cases"].items():
        out[f"predict_{name}_over_backbone_b4"] = res["over_backbone_b4"]
        out[f"predict_{name}_over_backbone_b16"] = res["over_backbone_b16"]
    main = f"onnx_nospin_png256_heatmaps_b{default_batch['onnx_nospin']}"  # `vqflow predict --run`'s default
    out["goal_predict_at_least_0.9x_backbone"] = {
        "case": main,
        "vs_backbone_b4": predict["cases"][main]["over_backbone_b4"],
        "vs_backbone_b16": predict["cases"][main]["over_backbone_b16"],
        "vs_backbone_b4_pooled": predict["cases"][main]["over_backbone_b4_pooled"],
        "vs_backbone_b16_pooled": predict["cases"][main]["over_backbone_b16_pooled"],
    }
    out["goal_detector_at_least_fastflow_b16"] = {
        "eager": out["detector_over_fastflow_b16"],
        "frozen": out["detector_frozen_over_fastflow_b16"],
    }
    return out


def markdown(report: dict) -> str:
    """A short human-readable summary of the report."""
    lines = [
        "# Predict speed (bench_predict.py)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
        "",
        f"Load average before / after: {report['load_average_before']} / {report['load_average_after']}",
        "",
        "## Model only, images/s: median (best) of interleaved rounds, random 256 px inputs",
        "",
    ]
    model = report["model_only"]
    names = list(next(iter(model.values()))["images_per_second"])
    lines += ["| batch | " + " | ".join(names) + " | other processes, cores |", "|---" * (len(names) + 2) + "|"]
    for key, res in model.items():
        cells = [f"{res['images_per_second'][n]:.1f} ({res['images_per_second_best'][n]:.1f})" for n in names]
        lines.append(f"| {key.split('_')[1]} | " + " | ".join(cells) + f" | {res['foreign_cpu_cores']} |")
    lines += [
        "",
        "## Predict pipeline, in-process (model load excluded), images/s",
        "",
        "Ratios to the backbone alone probed around each run; in brackets, to the median of all probes "
        f"({PROBE_IMAGES} images per probe).",
        "",
        "| case | images/s | / backbone b4 | / backbone b16 | / own model alone | other processes, cores |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in report["predict"]["cases"].items():
        lines.append(
            f"| {name} | {res['images_per_second']:.1f} | {res['over_backbone_b4']:.2f} "
            f"({res['over_backbone_b4_pooled']:.2f}) | {res['over_backbone_b16']:.2f} "
            f"({res['over_backbone_b16_pooled']:.2f}) | {res['over_own_model_alone']:.2f} | "
            f"{res['foreign_cpu_cores_all']} |"
        )
    probes = report["predict"]["backbone_probes_images_per_second"]
    lines += ["", "Backbone probes, images/s: " + "; ".join(f"{k}: {v}" for k, v in probes.items())]
    lines += [
        "",
        "## Stage costs alone, ms per image (one thread)",
        "",
        "| images | decode+preprocess | resize map | write heatmap | = overlay | + colour bar | + JPEG encode "
        "| PNG encode instead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = (
        "decode_preprocess_ms",
        "resize_map_ms",
        "write_heatmap_ms",
        "of_which_overlay_ms",
        "of_which_colorbar_ms",
        "of_which_jpeg_encode_ms",
        "png_encode_instead_ms",
    )
    for name, res in report["stage_costs"].items():
        lines.append(f"| {name} | " + " | ".join(str(res[k]) for k in keys) + " |")
    lines += ["", "## Ratios (model-only ones from medians; best rounds in brackets)", ""]
    best = report["ratios_from_best_rounds"]
    lines += [
        f"- {k}: {v}" + (f" ({best[k]})" if k in best else "")
        for k, v in report["ratios"].items()
        if not k.startswith("predict_")
    ]
    lines += ["", f"FastFlow: {report['fastflow'].get('status')}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    """`keep` (created) or a temporary folder removed afterwards."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
            yield Path(tmp)


def start_fastflow(python: str, tmp: Path, backbone: torch.nn.Module) -> tuple[FastflowProcess | None, dict]:
    """The FastFlow worker and its status, or None and why not."""
    if not Path(python).exists():
        return None, {"status": f"not run: {python} does not exist (see the module docstring for the recipe)"}
    worker = FastflowProcess(python, tmp, backbone, tmp / "fastflow_worker.log")
    if "error" in worker.info:
        worker.close()
        return None, {"status": "not run", "error": worker.info["error"]}
    return worker, {"status": "run in a subprocess, interleaved", **worker.info}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="images per predict folder")
    ap.add_argument("--out", default="benchmarks/results/predict.json")
    ap.add_argument("--rounds", type=int, default=7, help="timed model-only rounds per batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--predict-rounds", type=int, default=2, help="timed runs of each predict case")
    ap.add_argument("--run", help="reuse a trained run instead of fitting one")
    ap.add_argument("--onnx", help="reuse an exported model instead of exporting the run")
    ap.add_argument(
        "--fastflow-python", default=FASTFLOW_PYTHON, help="python of a virtualenv with anomalib (and the same torch)"
    )
    ap.add_argument("--workdir", help="keep the run, images and logs here (default: a temporary folder)")
    ap.add_argument("--fastflow-worker", nargs=2, metavar=("BACKBONE_PT", "CHECK_PT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fastflow_worker:
        fastflow_worker(*args.fastflow_worker)
        return

    from vqflow.engine.build import load_run
    from vqflow.engine.predict import onnx_model, torch_model
    from vqflow.export.inferencer import OnnxInferencer
    from vqflow.model.detector import frozen_forward

    started = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    with workdir(args.workdir) as tmp:
        print("setup: run, export, images", flush=True)
        run, onnx_path, setup = prepare_model(tmp, args.run, args.onnx)
        folders = make_image_sets(tmp, args.images)
        warm = {k: subset_folder(v, tmp / f"warm_{k}", 8) for k, v in folders.items()}

        det = load_run(run, "cpu").detector
        inf = OnnxInferencer(onnx_path)
        inputs = random_inputs()
        backbone = torch_runner(det.backbone, inputs)
        runners: dict[str, Runner] = {
            "backbone": backbone,
            "head_and_scores": head_runner(det, inputs),
            "detector": torch_runner(det, inputs),
            "detector_frozen": torch_runner(frozen_forward(det, (SIZE, SIZE)), inputs),
            "onnxruntime": onnx_runner(inf, inputs),
            "onnxruntime_nospin": onnx_nospin_runner(onnx_path, inputs),
        }
        worker, fastflow = start_fastflow(args.fastflow_python, tmp, det.backbone)
        if worker is not None:
            runners["fastflow"] = worker
        print(f"fastflow: {fastflow['status']} {fastflow.get('error', '')}", flush=True)

        print("model only:", flush=True)
        foreign = ForeignCpu((worker.proc.pid,) if worker is not None else ())
        model = model_only(runners, BATCHES, args.rounds, args.warmup, foreign)
        if worker is not None:
            worker.close()

        models = {"torch": torch_model(run, "cpu"), "onnx_nospin": onnx_model(onnx_path)}  # as vqflow runs them
        default_batch = {name: m.batch_size for name, m in models.items()}
        print(f"predict pipeline ({args.images} images per folder):", flush=True)
        cases = predict_cases(default_batch)
        alone = {"torch": runners["detector_frozen"], "onnx_nospin": runners["onnxruntime_nospin"]}
        predict = predict_pipeline(
            models, alone, folders, warm, tmp, cases, backbone, args.predict_rounds, args.images, ForeignCpu()
        )
        print("stage costs:", flush=True)
        stages = stage_costs(folders, models["torch"], tmp)

    report = {
        "what": __doc__.splitlines()[0],
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(inf.session.get_session_options().intra_op_num_threads),
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "settings": {
            "image_size": SIZE,
            "batches": list(BATCHES),
            "rounds": args.rounds,
            "warmup": args.warmup,
            "predict_images": args.images,
            "predict_rounds": args.predict_rounds,
            "large_images_wh": list(LARGE),
            "vqflow_cpu_default_batch": default_batch["torch"],
            "onnx_predict_batch_default": default_batch["onnx_nospin"],
        },
        "setup": setup,
        "definitions": {
            "backbone": "det.backbone(x): vqflow's frozen Lite0, maps f1..f4",
            "head_and_scores": "det.predict_features(feats): the detector less backbone and pooling",
            "detector": "det(x) under no_grad: backbone + pooling + VQ-Flow head + scores and 256 px maps",
            "detector_frozen": "frozen_forward(det): the same forward, head + scores traced and frozen by "
            "TorchScript (what vqflow predict --run --engine torch runs)",
            "onnxruntime": "OnnxInferencer(model.onnx).run(x): the exported detector, spinning threads (default)",
            "onnxruntime_nospin": "the same graph, spin=False (idle threads sleep): what vqflow predict runs "
            "(--onnx, and --run where onnxruntime is installed)",
            "images_per_second_best": "from the fastest round: the least disturbed by other processes",
            "foreign_cpu_cores": "mean CPU cores other processes kept busy meanwhile (/proc/stat less own use)",
            "fastflow": "anomalib FastflowModel.forward (eval: maps + scores at 256 px) on the same Lite0 module "
            "(pickled from this process; f1..f3), flows built by anomalib for its channels",
            "predict": "run_predict(model, [folder], out) in-process: read-ahead thread, model, writer thread "
            "(heatmap JPEG at input resolution, scores.csv); model loading excluded",
            "over_backbone_bN": "predict images/s / backbone-alone images/s at batch N, the backbone probed "
            "just before and just after that predict run",
            "over_backbone_bN_pooled": "predict images/s / the median of all backbone probes of the run",
            "over_own_model_alone": "predict images/s / its runtime's model alone (detector or onnxruntime) at "
            "the case's batch, probed just after that predict run",
        },
        "model_only": model,
        "predict": predict,
        "stage_costs": stages,
        "fastflow": fastflow,
        "ratios": ratios(model, predict, default_batch),
        "ratios_from_best_rounds": {
            k: v
            for k, v in ratios(model, predict, default_batch, "images_per_second_best").items()
            if not k.startswith(("predict_", "goal_predict"))
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
