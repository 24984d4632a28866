"""`python -m charlm` is the `charlm` command (torchrun starts it this way)."""

import sys

from charlm.cli import main

sys.exit(main())
