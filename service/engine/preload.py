"""The fork server's preload (`service.engine.forkserver`): imported there only, so that every engine
and front end forks with torch and the engine's modules already in memory."""

import gc
import signal

import service.engine.process  # noqa: F401  (torch with it)
from service.process_title import set_title

set_title("fork server", "charlm-forksrv")
# A SIGTERM sent to the whole process group (systemd, `kill -TERM -PGID`) must not end the fork server:
# its children's exit statuses reach the server through it, and without it every running child would
# read as exited. It ends with the server, when the server closes its end (multiprocessing's design).
# Its children set their own handlers (uvicorn's, the engine's).
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# Frozen, the objects imported so far are never walked by the collector again, in this process or
# in the engines forked from it: a collection writes to every object it visits, and each write
# would copy the page the object lives on into the child that made it (about 30 MB more per
# engine, measured). Reference counting still writes to the objects an engine uses.
gc.collect()
gc.freeze()
