"""``python -m cpcnn.training``: see :mod:`cpcnn.training.main`."""

import sys

from cpcnn.training.main import main

sys.exit(main())
