"""`python -m handpipe.cli`: the same as the `handpipe` command (the tests and bench scripts run it so)."""

import sys

from . import main

sys.exit(main())
