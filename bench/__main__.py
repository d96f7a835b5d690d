"""``python -m bench [options]``: the resolution sweep (same options as ``glsmamba bench``)."""

import sys

from bench.sweep import main

sys.exit(main())
