"""Ends a pytest run that loaded Triton without the interpreter's finalization, so the output ends
with pytest's summary.

Triton's C++ extension is built with nanobind, which at finalization lists every object of its
types still alive: about a hundred lines of "nanobind: leaked N instances / types / functions"
after the summary, with no switch to turn them off. Once pytest has reported and handed over its
exit status, the process ends with that status through os._exit, after this module's exit
handler has flushed what Python's own finalization would: logging and the standard streams.

The handler is registered when this module is imported, before torch, Triton or Ray are: exit
handlers run newest first, so theirs (Ray's shutdown among them) run before it. A run that never
loaded Triton exits as usual. (PYTEST_DONT_REWRITE: tests/__init__.py imports this module before
pytest registers it as a plugin, and it has no assertions to rewrite.)
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

import pytest

TRITON_EXTENSION = "triton._C.libtriton"
_finished: list[pytest.Session] = []  # the session, once it has finished: its exitstatus is final by exit


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    _finished.append(session)


def end_without_finalization() -> None:
    """At exit: when Triton's extension is loaded and pytest finished a session, end the process
    with pytest's status, skipping the finalization in which nanobind prints its leak report."""
    if not _finished or TRITON_EXTENSION not in sys.modules:
        return
    logging.shutdown()  # registered before this handler, so it would otherwise not run
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(int(_finished[-1].exitstatus))


atexit.register(end_without_finalization)
