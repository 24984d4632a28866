"""Where the server's child processes come from: forked from one fork server that imported torch once.

With multiprocessing's 'spawn', every engine and every front end started a fresh interpreter and
imported torch again: torch alone is 218 MB resident, 143 MB of it heap that the interpreter and
torch write at import, private to each process. Forked from a server that holds it already, the
children share those pages copy-on-write: the five bundled models' server fell from 1.31 GB to
0.74 GB of proportional memory (PSS) with one front end, and from 1.65 GB to 0.82 GB with two
(docs/benchmarks.md, "Memory"). Engines (`service.control.engines`) and the supervisor's front
ends (`service.supervisor`) both start here; a front end imports the web stack after its fork.

The fork server is started once, by the first child, as a fresh interpreter (no state of the
process that starts it, no threads), and imports `service.engine.preload`. It must never
initialise CUDA, or no engine forked from it could use the GPU; importing torch does not. It finds
modules on its own sys.path (the environment's and the working directory's: Python 3.11 does not
pass it the parent's), the parent's too unless the parent changed its own. Its children's exit
statuses reach the parent through it: were it killed, they would read as exited (status 255)
while they run on (docs/reliability.md).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext, SpawnContext

PRELOAD = ["service.engine.preload"]


def child_context() -> ForkServerContext | SpawnContext:
    """The multiprocessing context engines and front ends are started with ('spawn' where there is
    no fork server: Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context
