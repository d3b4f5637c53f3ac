"""Progress in a log: plain lines every few seconds, no carriage-return frames."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_progress_in_a_log_is_plain_lines():
    code = textwrap.dedent("""
        import time
        from vqflow.engine import progress as p
        with p.progress(total=50, desc="epoch 1/2", unit="batch") as bar:
            bar.interval = 0.05
            for i in range(50):
                time.sleep(0.004)
                bar.set_postfix(loss=f"{i:.1f}")
                bar.update(1)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr and 2 <= len(lines) <= 10, lines
    assert lines[-1].startswith("epoch 1/2: 50/50 batch (") and "loss=49.0" in lines[-1]


def test_quiet_progress_writes_nothing(capsys):
    from vqflow.engine.progress import progress

    with progress(total=3, quiet=True) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_a_mistyped_command_suggests_the_right_one(capsys):
    from vqflow.cli import main

    assert main(["predcit", "--run", "x"]) == 2
    assert "did you mean 'vqflow predict'?" in capsys.readouterr().err


def test_help_shows_defaults_and_examples(capsys):
    import pytest

    from vqflow.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "fast 40" in text and "9826" in text and "auto (default" in text and "examples:" in text


def test_option_type_errors_are_in_words(capsys):
    import pytest

    from vqflow.cli import main

    for argv, words in (
        (["fit", "--data", "demo", "--out", "x", "--epochs", "ten"], "--epochs: expects an integer, got 'ten'"),
        (["predict", "--run", "x", "y", "--threshold", "high"], "--threshold: expects a number, got 'high'"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert words in err and "invalid" not in err, err
