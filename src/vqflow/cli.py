"""The `vqflow` command: fit, test, predict, export, demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# make torch many times slower (benchmarks/results/inference.json). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vqflow import __version__
from vqflow.errors import VQFlowError, first_line


def _typed(tp: type) -> Any:
    """An argparse type for int or float whose error is in words, as config keys' are ("expects an
    integer, got 'ten'"; argparse would say "invalid int value")."""

    def convert(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            from vqflow.config import in_words  # on the error path only: --help stays light

            raise argparse.ArgumentTypeError(f"expects {in_words(tp)}, got {text!r}") from None

    return convert


def _config_options(p: argparse.ArgumentParser, data: bool = True) -> None:
    g = p.add_argument_group("configuration")
    if data:
        g.add_argument(
            "--data",
            action="append",
            metavar="SPEC",
            help="mvtec:PATH, visa:PATH, folder:PATH, cifar10:PATH, fmnist[:PATH] or demo; repeatable",
        )
        g.add_argument("--classes", help="all (default), or NAME,NAME,... of a class-structured dataset")
        g.add_argument("--normal", help="normal class ids of cifar10/fmnist, e.g. 0,1,2,3,4")
    g.add_argument("--preset", choices=["fast", "reference"], help="model size preset (default fast)")
    g.add_argument("--config", metavar="YAML", help="a config file; options given here override it")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    g.add_argument("--backbone", help="efficientnet_lite0 (default), efficientnet_lite2, or a timm model name")
    g.add_argument("--backbone-weights", metavar="FILE", help="a local state dict for the backbone (offline use)")
    g.add_argument(
        "--epochs", type=_typed(int), help="training epochs (default: the preset's, fast 40, reference 60; demo 20)"
    )
    g.add_argument("--seed", type=_typed(int), help="random seed, 0 to 4294967295 (default 9826, the authors')")
    g.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _command(sub: argparse._SubParsersAction, name: str, summary: str, *examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its usage examples."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=summary, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vqflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "fit",
        "train one model on the normal images of all classes",
        "vqflow fit --data mvtec:/data/mvtec_ad --classes all --out runs/mvtec",
        "vqflow fit --data fmnist --normal 0,1,2,3,4 --epochs 20 --out runs/fmnist",
    )
    _config_options(p)
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _common(p)

    p = _command(
        sub,
        "test",
        "evaluate a run per class: metrics.json/.csv, scores.csv, report.html",
        "vqflow test --run runs/mvtec",
        "vqflow test --run runs/mvtec --no-report --quiet",
    )
    p.add_argument("--run", required=True, help="run folder written by 'vqflow fit'")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    _common(p)

    p = _command(
        sub,
        "predict",
        "score new images: scores.csv, heatmaps, verdicts",
        "vqflow predict --run runs/mvtec photos/ --out preds/",
        "vqflow predict --onnx runs/mvtec/export/model.onnx photos/ --out preds/ --save-maps",
    )
    p.add_argument("--run", help="run folder written by 'vqflow fit'")
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="an exported model (vqflow export) instead of --run; runs on onnxruntime without torch",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, help="folder for scores.csv, heatmaps/ and maps/")
    p.add_argument(
        "--threshold", type=_typed(float), help="verdict threshold on the score, instead of the calibrated ones"
    )
    p.add_argument(
        "--save-maps",
        action="store_true",
        help="also write each raw float map as maps/NAME.npy (at the input's own resolution)",
    )
    p.add_argument("--no-heatmaps", action="store_true", help="write scores.csv only (fastest)")
    p.add_argument(
        "--engine",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="how --run's model runs: auto (default) = onnxruntime on the CPU where it is installed "
        "(the run exported once into $VQFLOW_CACHE/onnx), torch otherwise",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    _common(p)

    p = _command(
        sub,
        "export",
        "write the run's detector as one ONNX graph plus a JSON sidecar",
        "vqflow export --run runs/mvtec",
        "vqflow export --run runs/mvtec --out model.onnx --check photos/",
    )
    p.add_argument("--run", required=True, help="run folder written by 'vqflow fit'")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument("--out", help="output file (default RUN/export/model.onnx; the sidecar goes beside it as .json)")
    p.add_argument(
        "--check",
        nargs="*",
        metavar="IMAGE_OR_FOLDER",
        help="compare ONNX Runtime with torch on these images (default: the run's held-out "
        "normals are not stored, so a seeded noise batch); needs onnxruntime",
    )
    _common(p)

    p = _command(
        sub,
        "demo",
        "the embedded default: fast preset on the demo set, then test and report",
        "vqflow demo",
        "vqflow demo --out runs/demo40 --epochs 40",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    _config_options(p, data=False)
    _common(p)
    return parser


def _explicit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given as their own options (None where not given)."""
    return {
        "train.epochs": args.epochs,
        "train.seed": args.seed,
        "train.device": args.device,
        "model.backbone": args.backbone,
        "model.backbone_weights": args.backbone_weights,
    }


def resolve_config(args: argparse.Namespace, data: bool = True) -> Any:
    from vqflow import config

    options = _explicit_options(args)
    if data:
        options["data.specs"] = args.data
        if args.classes is not None:
            options["data.classes"] = None if args.classes.strip().lower() == "all" else args.classes
        options["data.normal"] = args.normal
    return config.resolve(args.preset, args.config, args.set, **options)


def config_file_data(path: str) -> dict:
    """The raw mapping of a --config file (a saved run's config.yaml holds data.specs)."""
    from vqflow import config

    return config.load_yaml(path)


def cmd_fit(args: argparse.Namespace) -> int:
    from vqflow.engine.fit import fit

    if args.resume and not args.data and not args.config:
        # The saved config, with what the user states now applied over it: fit refuses the
        # keys that may not change on resume and names them; nothing is silently ignored.
        from vqflow import config
        from vqflow.engine.checkpoint import load_checkpoint

        saved = load_checkpoint(Path(args.out) / "checkpoints" / "last.pt")["config"]
        if args.preset is not None and args.preset != saved.get("preset"):
            raise VQFlowError(
                f"--resume: --preset {args.preset} differs from the run's preset {saved.get('preset')}; "
                "resume without --preset, or train a new run"
            )
        cfg = config.apply_options(config.from_dict(saved), args.set, **_explicit_options(args))
    else:
        cfg = resolve_config(args)
        from_file = bool(args.config) and "specs" in (config_file_data(args.config).get("data") or {})
        if not args.data and not from_file:
            raise VQFlowError("fit needs --data SPEC (e.g. --data mvtec:/data/mvtec_ad, or --data demo)")
    fit(cfg, args.out, resume=args.resume, quiet=args.quiet)
    if not args.quiet:
        print(f"trained model in {args.out}; evaluate with: vqflow test --run {args.out}")
    return 0


def _print_metrics(metrics: dict) -> None:
    from vqflow.report import format_decisions, format_table

    print(format_table(metrics))
    verdicts = format_decisions(metrics.get("decisions"))
    if verdicts:
        print(verdicts)


def cmd_test(args: argparse.Namespace) -> int:
    from vqflow.engine.evaluate import EvaluationInterrupted, evaluate

    try:
        metrics = evaluate(args.run, device=args.device, quiet=args.quiet, report=not args.no_report)
    except EvaluationInterrupted as e:  # "interrupted; <which outputs the run folder holds>"
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    _print_metrics(metrics)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vqflow.engine.predict import predict

    if args.run is None and args.onnx is None:
        raise VQFlowError("predict needs --run DIR (a trained run) or --onnx FILE (an exported model)")
    rows = predict(
        args.run,
        args.inputs,
        args.out,
        device=args.device,
        quiet=args.quiet,
        threshold=args.threshold,
        heatmaps=not args.no_heatmaps,
        save_maps=args.save_maps,
        onnx=args.onnx,
        engine=args.engine,
    )
    failed = sum(1 for r in rows if r["error"])
    flagged = sum(1 for r in rows if r["verdict"] == "anomalous")
    print(
        f"{len(rows) - failed} image(s) scored ({flagged} anomalous), {failed} unreadable; "
        f"results in {Path(args.out) / 'scores.csv'}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vqflow.engine.build import load_run
    from vqflow.export.onnx import export_onnx

    run = load_run(args.run, "cpu")  # loaded once: exported, then checked against
    path, side = export_onnx(run, args.out)
    print(f"exported {path} and {side}")
    if args.check is not None:
        import numpy as np

        from vqflow.export.onnx import check_parity
        from vqflow.imageio import model_input, read_rgb

        size = (run.cfg.data.image_size, run.cfg.data.image_size)
        if args.check:
            from vqflow.engine.predict import collect_images

            files = [f for f, _ in collect_images(args.check)][:16]
            images = np.stack([model_input(read_rgb(f), size) for f in files])
        else:
            images = np.random.default_rng(0).standard_normal((4, 3, *size)).astype(np.float32)
        parity = check_parity(run.detector, path, images)
        print(
            f"parity on {parity.images} image(s): max |onnx - torch| / range: score {parity.score:.2e}, "
            f"map {parity.anomaly_map:.2e}; concepts differing: {parity.concept_mismatches}"
        )
        if not parity.ok():
            raise VQFlowError(f"the ONNX graph {path} differs from the torch model beyond 1e-4 of the output range")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vqflow.engine.evaluate import evaluate
    from vqflow.engine.fit import fit

    args.data, args.classes, args.normal = ["demo"], None, None
    if args.epochs is None and not args.config and not any(s.startswith("train.epochs") for s in args.set):
        args.epochs = DEMO_EPOCHS
    cfg = resolve_config(args)
    out = Path(args.out)
    resume = (out / "checkpoints" / "last.pt").exists() and not (out / "checkpoints" / "final.pt").exists()
    if not (out / "checkpoints" / "final.pt").exists():
        fit(cfg, out, resume=resume, quiet=args.quiet)
    metrics = evaluate(out, device=args.device or "auto", quiet=args.quiet)
    _print_metrics(metrics)
    if args.quiet:  # otherwise evaluate has said where the report is
        print(f"report: {(out / 'report.html').resolve()}")
    return 0


# The demo's own length, set by its time budget: 20 epochs keep `vqflow demo` under 5 minutes on
# 2 CPU cores. At lr 1e-3 they score what 30 epochs at the earlier 5e-4 did on development data
# (RESULTS.md section 7); more epochs still score higher: `vqflow demo --epochs 40`.
DEMO_EPOCHS = 20

COMMANDS = {"fit": cmd_fit, "test": cmd_test, "predict": cmd_predict, "export": cmd_export, "demo": cmd_demo}


def _unknown_command(argv: list[str]) -> str | None:
    """'unknown command ...; did you mean ...?' for a first argument that is no command."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return None
    import difflib

    near = difflib.get_close_matches(argv[0], list(COMMANDS), n=1, cutoff=0.5)
    hint = f"did you mean 'vqflow {near[0]}'?" if near else f"the commands are {', '.join(COMMANDS)}"
    return f"unknown command '{argv[0]}'; {hint}"


# What each command writes at --out: a folder, or (export) a file.
_OUT_KINDS = {"fit": "folder", "predict": "folder", "demo": "folder", "export": "file"}
_VIRTUAL_FS = (Path("/proc"), Path("/sys"))


def check_out(command: str, out: str | None) -> None:
    """Refuse an --out that cannot be written before any work is done: an existing file (or,
    for export, folder), a path below a file, a virtual file system, or an unwritable folder."""
    kind = _OUT_KINDS.get(command)
    if out is None or kind is None:
        return
    path = Path(out)
    where = f"--out {out}"
    resolved = Path(os.path.realpath(path))
    for fs in _VIRTUAL_FS:
        if resolved == fs or fs in resolved.parents:
            raise VQFlowError(
                f"{where} is under {fs}, a virtual file system that cannot hold files; choose a folder on a disk"
            )
    if kind == "folder" and path.exists() and not path.is_dir():
        raise VQFlowError(f"{where} is an existing file; {command} writes a folder there: choose another path")
    if kind == "file" and path.is_dir():
        raise VQFlowError(
            f"{where} is a folder; {command} writes a file: give a file name such as {path / 'model.onnx'}"
        )
    folder = path if kind == "folder" else path.parent
    existing = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), Path("."))
    if not existing.is_dir():
        raise VQFlowError(f"{where} is below {existing}, which is a file, not a folder; choose a path below a folder")
    problem = _unwritable(existing)
    if problem:
        what = "" if existing == folder else f" (in {existing})"
        raise VQFlowError(f"{where} cannot be written{what}: {problem}")


def _unwritable(folder: Path) -> str | None:
    """Why no file can be created in `folder` ('reason; what to do'), or None: a real probe
    file, since root passes every permission test that os.access would make."""
    import tempfile

    from vqflow.atomic import write_reason

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".vqflow-probe-")
    except OSError as e:
        reason, advice = write_reason(e) or ((e.strerror or first_line(e)).lower(), "choose another folder")
        return f"{reason}; {advice}"
    os.close(fd)
    os.unlink(probe)
    return None


def _os_error_line(e: OSError) -> str:
    """One line for an OSError that names a file: the file(s), the reason in words, a hint."""
    names = " -> ".join(os.fsdecode(n) for n in (e.filename, e.filename2) if n is not None)
    reason = (e.strerror or first_line(e)).lower()
    return f"{names}: {reason}; check the path, its permissions and free disk space (--debug shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    problem = _unknown_command(sys.argv[1:] if argv is None else argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        check_out(args.command, getattr(args, "out", None))
        return COMMANDS[args.command](args)
    except VQFlowError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # EvaluationInterrupted says what the run folder holds
        print(str(e) or "interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except Exception as e:
        from vqflow.engine.fit import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            print(str(e), file=sys.stderr)
            return 128 + e.signum
        if args.debug or os.environ.get("VQFLOW_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename is not None:  # last resort: a file named, so one line
            print(f"error: {_os_error_line(e)}", file=sys.stderr)
            return 2
        print(
            f"error: unexpected {type(e).__name__}: {first_line(e, 300)} (run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
