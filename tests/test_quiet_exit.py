"""tests/quiet_exit.py: a run that loaded Triton ends with pytest's summary and pytest's exit status,
not with nanobind's leak report. Each case runs pytest in a subprocess on a test that leaks one
Triton object on purpose (an extra reference that nothing releases)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import missing_tool

REPO = Path(__file__).resolve().parent.parent
LEAKING_TEST = """
import ctypes, os
from triton._C.libtriton import ir

def test_leaks_one_triton_object():
    context = ir.context()
    ir.load_dialects(context)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(ir.builder(context).get_int32_attr(1)))
    assert os.environ.get("LEAKING_TEST_FAILS") != "1"
"""


def run_pytest(tmp_path: Path, *plugin: str, fails: bool = False) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("triton") is None:
        missing_tool("Triton is not installed (the dev extra installs it on Linux x86-64)")
    (tmp_path / "test_leak.py").write_text(LEAKING_TEST)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEAKING_TEST_FAILS": "1" if fails else "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *plugin,
               str(tmp_path / "test_leak.py")]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_it_a_run_that_loaded_triton_ends_in_nanobinds_leak_report(tmp_path):
    done = run_pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nanobind: leaked" in done.stderr  # the leak this file makes is real


@pytest.mark.parametrize("fails", [False, True], ids=["passed", "failed"])
def test_the_output_ends_with_pytests_summary_and_keeps_its_exit_status(tmp_path, fails):
    done = run_pytest(tmp_path, "-p", "tests.quiet_exit", fails=fails)
    assert done.returncode == (1 if fails else 0), done.stdout + done.stderr
    assert "nanobind" not in done.stdout + done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("1 failed" if fails else "1 passed")
