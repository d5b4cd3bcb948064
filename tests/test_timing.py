"""The slowdown factor: from the environment, checked, and applied to pytest-timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from timing import scaled


def run(code: str, slowdown: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOMSCRIBE_TEST_SLOWDOWN": slowdown,
           "PYTHONPATH": str(REPO / "tests")}
    return subprocess.run([sys.executable, *code.split("\0")], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO / "tests", timeout=scaled(60), check=False)


def test_the_factor_comes_from_the_environment() -> None:
    done = run("-c\0import timing; print(timing.SLOWDOWN, timing.SOURCE, timing.scaled(2))",
               "7.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7.5", "from", "ROOMSCRIBE_TEST_SLOWDOWN", "15.0"]


def test_a_bad_factor_is_one_clear_line() -> None:
    for bad in ("fast", "0.5", "nan", "-3"):
        done = run("-c\0import timing", bad)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"ROOMSCRIBE_TEST_SLOWDOWN={bad!r}: must be a number >= 1 "
            "(how many times slower than x86)"]


def test_pytest_timeout_is_scaled(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n"
        "def test_default(request):\n"
        "    print('default', request.node.get_closest_marker('timeout').args[0])\n"
        "@pytest.mark.timeout(20)\n"
        "def test_own(request):\n"
        "    print('own', request.node.get_closest_marker('timeout').args[0])\n")
    # the project's conftest as a plugin: the hook that scales, as the suite runs it
    done = run(f"-m\0pytest\0-s\0-q\0-p\0no:cacheprovider\0-p\0conftest\0--timeout=300\0"
               f"{tmp_path}", "3",
               cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "default 900.0" in done.stdout and "own 60.0" in done.stdout, done.stdout
