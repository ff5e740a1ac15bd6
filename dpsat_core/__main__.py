"""`python -m dpsat_core`: see `dpsat_core.cli`."""

import sys

from .cli import main

sys.exit(main())
