"""``python -m glsmamba.bench [options]``: the resolution sweep (same options as ``glsmamba bench``)."""

import sys

from glsmamba.bench.sweep import main

sys.exit(main())
