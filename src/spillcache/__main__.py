"""``python -m spillcache``: the ``spillcache`` command."""

import sys

from .cli import main

sys.exit(main())
