"""``python -m training``: see :mod:`training.main`."""

import sys

from training.main import main

sys.exit(main())
