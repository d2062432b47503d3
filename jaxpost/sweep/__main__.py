"""``python -m jaxpost.sweep``: see ``jaxpost.sweep.launch``."""

import sys

from jaxpost.sweep.launch import main

sys.exit(main())
