"""Test-wide set-up: idle OpenMP threads sleep (the suite shares 2 cores with subprocesses)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
