"""``python -m glsmamba``: the ``glsmamba`` command line."""

import sys

from glsmamba.cli import main

sys.exit(main())
