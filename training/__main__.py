"""``python -m cpcnn.training ARGS``: an alias of ``cpcnn train ARGS`` (see :mod:`cpcnn.training.cli`)."""

import sys

from cpcnn.cli.main import main

sys.exit(main(["train", *sys.argv[1:]]))
