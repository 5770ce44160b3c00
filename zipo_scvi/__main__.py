"""``python -m zipo_scvi``: the ``zipo`` command line."""

import sys

from .cli import main

sys.exit(main())
