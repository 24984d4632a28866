"""The fork server's preload (`service.engine.forkserver`): imported there only, so that every engine
and front end forks with torch and the engine's modules already in memory."""

import gc

import service.engine.process  # noqa: F401  (torch with it)
from service.process_title import set_title

set_title("fork server", "charlm-forksrv")
# Frozen, the objects imported so far are never walked by the collector again, in this process or
# in the engines forked from it: a collection writes to every object it visits, and each write
# would copy the page the object lives on into the child that made it (about 30 MB more per
# engine, measured). Reference counting still writes to the objects an engine uses.
gc.collect()
gc.freeze()
