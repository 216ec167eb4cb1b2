"""``cpcnn`` entry point: build the parser from each command group, run, turn errors into one line.

The domain's own commands (``embed``, the profiles workflow and ``synth``) live in this package. The layers above
it (``serve``/``worker``, ``models``, ``train``) own their commands and announce them as entry points in
the ``cpcnn.commands`` group (see pyproject.toml); this module finds them through the installed package's
metadata and never imports a layer above the domain itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from cpcnn import __version__
from cpcnn.cli import demo_cmds, embed_cmds, plate_cmds, profiles_cmds, synth_cmds
from cpcnn.errors import CpcnnError

#: Entry-point group through which installed layers add command groups: ``name = "module:register"``.
ENTRY_POINT_GROUP = "cpcnn.commands"

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def command_groups() -> list[Register]:
    """The domain's ``register`` functions, then each installed layer's, in entry-point name order."""
    layers = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    return [
        embed_cmds.register, plate_cmds.register, profiles_cmds.register, synth_cmds.register, demo_cmds.register,
        *(point.load() for point in layers),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpcnn",
        description="Cell Painting CNN-1 embeddings, profiles and similarity search.",
    )
    parser.add_argument("--version", action="version", version=f"cpcnn {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in command_groups():
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CpcnnError as exc:
        print(f"cpcnn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cpcnn: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        print(f"cpcnn: error: missing dependency {exc.name!r}; {_extra_hint(exc.name)}", file=sys.stderr)
        return 1


def _extra_hint(module: str | None) -> str:
    train = {"torch", "h5py"}
    plots = {"matplotlib"}
    root = (module or "").split(".")[0]
    if root in train:
        return "install the 'train' extra: pip install 'cpcnn[train]'"
    if root in plots:
        return "install the 'plots' extra: pip install 'cpcnn[plots]'"
    return "install the 'serve' extra: pip install 'cpcnn[serve]'"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
