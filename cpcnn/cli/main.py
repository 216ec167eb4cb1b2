"""``cpcnn`` entry point: build the parser from each command group, run, turn errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cpcnn import __version__
from cpcnn.cli import embed_cmds, models_cmds, profiles_cmds, serve_cmds
from cpcnn.errors import CpcnnError

COMMAND_GROUPS = (embed_cmds, models_cmds, profiles_cmds, serve_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpcnn",
        description="Cell Painting CNN-1 embeddings, profiles and similarity search.",
    )
    parser.add_argument("--version", action="version", version=f"cpcnn {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
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
    train = {"torch", "onnx", "h5py"}
    plots = {"matplotlib"}
    root = (module or "").split(".")[0]
    if root in train:
        return "install the 'train' extra: pip install 'cpcnn[train]'"
    if root in plots:
        return "install the 'plots' extra: pip install 'cpcnn[plots]'"
    return "install the 'serve' extra: pip install 'cpcnn[serve]'"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
