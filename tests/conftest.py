"""Test-wide set-up: idle OpenMP threads sleep (the suite shares 2 cores with subprocesses),
and one tiny trained run shared by the predict and export tests."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def vqflow_cache(tmp_path_factory) -> Path:
    """A fresh $VQFLOW_CACHE for the session (predict's cached ONNX exports), never the user's."""
    old = os.environ.get("VQFLOW_CACHE")
    path = tmp_path_factory.mktemp("vqflow_cache")
    os.environ["VQFLOW_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VQFLOW_CACHE", None)
    else:
        os.environ["VQFLOW_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two classes of synthetic textures in MVTec layout (tests/tiny_run.py)."""
    from tiny_run import make_tiny_mvtec

    return make_tiny_mvtec(tmp_path_factory.mktemp("tiny_mvtec"))


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny model trained for 2 epochs on tiny_data, with its calibration."""
    from tiny_run import tiny_args
    from vqflow.cli import main

    out = tmp_path_factory.mktemp("tiny_runs") / "run"
    assert main(["fit", "--data", f"mvtec:{tiny_data}", "--out", str(out), *tiny_args(2)]) == 0
    return out
