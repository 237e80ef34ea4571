"""``python -m trm.registry``: list every registered component (built-ins and plugins)."""

import sys

from trm.registry import main

sys.exit(main())
