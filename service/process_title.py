"""What `ps` and `top` call each process of `charlm serve`.

Every process of the server is `python` to the system, and multiprocessing's children all read
`python -B -c from multiprocessing...`; a title says which is the supervisor, which a front end and
which model's engine. Two names are set, because the tools read two places:

- the command line (`/proc/PID/cmdline`: `ps`, `ps aux`, `top -c`, htop) gets the full title,
  `charlm: engine shakespeare-gpt`. Only the `setproctitle` package can do this: the kernel keeps
  no copy of argv, so the bytes of the process's own argv must be rewritten in place (and moved
  aside when the title is longer than the original, which it does);
- the command name (`/proc/PID/comm`: `top`'s default view, `ps -o comm`, `pgrep`) holds 15
  bytes, where the full title would be cut to `charlm: engine `; it gets a short name of its own,
  `charlm-engine`, and the model's name goes in the command line only.

setproctitle is a dependency; where it is missing (a GPU machine's hand-picked wheels), the
command name is still set, through /proc, and the server runs the same: titles are for people.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

try:
    import setproctitle
except ImportError:  # pragma: no cover - every install from pyproject.toml has it
    setproctitle = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)
COMM_BYTES = 15  # the kernel's TASK_COMM_LEN less its terminating zero


def set_title(title: str, short: str) -> None:
    """Title this process `charlm: {title}` on its command line and `short` as its command name.
    Call it from the main thread: the command name is the main thread's name."""
    if setproctitle is not None:
        setproctitle.setproctitle(f"charlm: {title}")
        setproctitle.setthreadtitle(short[:COMM_BYTES])
        return
    logger.debug("setproctitle is not installed: the command line stays python's")
    with contextlib.suppress(OSError):  # not Linux
        Path("/proc/self/comm").write_text(short[:COMM_BYTES])
