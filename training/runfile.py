"""A training run described by a TOML or YAML file: every ``cpcnn train run`` option, the command line winning.

Keys are the option names without the leading dashes (``batch-size`` or ``batch_size``); the file may
also list ``sources`` (see :mod:`cpcnn.training.sources`) as an array of tables. The file is copied into
the run folder so a run can be repeated from its folder alone. Only parsing lives here: the command
decides what each value means.
"""

from __future__ import annotations

import argparse
import shutil
import tomllib
from pathlib import Path
from typing import Any

from cpcnn.errors import InputError

#: Keys a file may hold that are not command-line options.
FILE_ONLY_KEYS = frozenset({"sources"})


def read_run_file(path: Path) -> dict[str, Any]:
    """``path`` (.toml, .yaml or .yml) -> its top-level table, keys with dashes turned into underscores."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not readable text ({type(exc).__name__})") from exc
    if suffix == ".toml":
        try:
            values: object = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config file {path.name} is not valid TOML: {exc}".splitlines()[0]) from exc
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise InputError(
                f"config file {path.name}: reading YAML needs pyyaml, install the 'train' extra"
            ) from exc
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path.name} is not valid YAML: {exc}".splitlines()[0]) from exc
        values = {} if values is None else values
    else:
        raise InputError(f"config file {path.name}: expected a .toml, .yaml or .yml file")
    if not isinstance(values, dict):
        raise InputError(
            f"config file {path.name} must hold a table of settings, not {type(values).__name__}"
        )
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def merge_run_options(
    parser: argparse.ArgumentParser, given: dict[str, Any], file_values: dict[str, Any], *, source: str
) -> dict[str, Any]:
    """Defaults < file < command line, every file value checked against the option it sets.

    ``given`` holds only the options typed on the command line (see :func:`given_options`).
    """
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}
    options = {dest: _default(action) for dest, action in actions.items()}
    for key, value in file_values.items():
        if key in FILE_ONLY_KEYS:
            options[key] = value
            continue
        if key not in actions or key == "config":
            raise InputError(f"config file {source}: unknown key {key!r}")
        options[key] = _checked(actions[key], key, value, source)
    options.update(given)
    return options


class Default:
    """An option's default as the parser holds it: prints as the value (for ``%(default)s`` in help), and
    tells a value typed on the command line (never a Default) from one left alone."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)


def _default(action: argparse.Action) -> Any:
    return action.default.value if isinstance(action.default, Default) else action.default


def mark_defaults(parser: argparse.ArgumentParser) -> None:
    """Wrap each default in :class:`Default`, so the parsed namespace shows what the command line set."""
    for action in parser._actions:
        if action.dest != "help" and not isinstance(action.default, Default):
            action.default = Default(action.default)


def given_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``parser`` that the command line set."""
    dests = {a.dest for a in parser._actions}
    return {k: v for k, v in vars(args).items() if k in dests and not isinstance(v, Default)}


def _checked(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """A file value converted like the command line would, or a one-line error naming the key."""

    def bad(expected: str) -> InputError:
        return InputError(f"config file {source}: key {key!r} must be {expected}, got {value!r}")

    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if value is None:
        return None
    if isinstance(value, list) and action.type is None and action.choices is None:
        if not all(isinstance(v, str | int) for v in value):
            raise bad("a list of names")
        return ",".join(str(v) for v in value)
    kind = action.type
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad("an integer")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        value = float(value)
    if kind is Path:
        if not isinstance(value, str):
            raise bad("a path")
        value = Path(value)
    if kind is None and not isinstance(value, str | int | float):
        raise bad("a string")
    if kind is None:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise bad(f"one of {', '.join(map(str, action.choices))}")
    return value


def resolve_file_paths(options: dict[str, Any], file_values: dict[str, Any], base: Path) -> None:
    """Relative paths written in the file are relative to the file's folder (those typed are not)."""
    for key, value in options.items():
        if key in file_values and isinstance(value, Path) and not value.is_absolute():
            options[key] = base / value


def copy_run_file(path: Path, out: Path) -> Path:
    """The file as given, kept in the run folder as ``run.toml`` / ``run.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"run{'.toml' if path.suffix.lower() == '.toml' else '.yaml'}"
    if Path(path).resolve() != target.resolve():
        shutil.copyfile(path, target)
    return target
