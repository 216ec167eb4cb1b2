"""``cpcnn train run --config``: TOML and YAML run files, the command line winning, one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from cpcnn.training.cli import register, run_options

from cpcnn.cli.main import main

#: cmd_run imports torch; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow


def parse(argv: list[str]) -> argparse.Namespace:
    """The ``run`` options as cmd_run sees them: defaults < file < command line."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return run_options(parser.parse_args(["train", "run", *argv]))


TOML = """\
index = "data/sites.csv"
out = "runs/a"
epochs = 4
batch-size = 16
lr = 0.01
holdout_plates = ["P2"]
split = "plates"
no_augment = true
"""

YAML = """\
index: data/sites.csv
out: runs/a
epochs: 4
batch_size: 16
lr: 0.01
holdout-plates: [P2]
split: plates
no_augment: true
"""


@pytest.mark.parametrize(("name", "text"), [("run.toml", TOML), ("run.yaml", YAML)])
def test_file_sets_options_and_the_command_line_wins(name: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text)
    args = parse(["--config", str(path), "--epochs", "2"])
    assert args.epochs == 2  # command line
    assert (args.batch_size, args.lr, args.split, args.no_augment) == (16, 0.01, "plates", True)
    assert args.holdout_plates == "P2"
    assert args.index == tmp_path / "data" / "sites.csv" and args.out == tmp_path / "runs" / "a"
    assert args.seed == 0 and args.precision == "auto"  # defaults where neither says
    plain = parse(["--index", "x.csv", "--out", "o"])
    assert plain.index == Path("x.csv") and plain.epochs == 30 and plain.sources is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("index = 'a.csv'\nout = 'o'\nepocs = 3\n", "unknown key 'epocs'"),
        ("index = 'a.csv'\nout = 'o'\nepochs = 'three'\n", "key 'epochs' must be an integer"),
        ("index = 'a.csv'\nout = 'o'\nsplit = 'wells'\n", "key 'split' must be one of cells, plates"),
        ("index = 'a.csv'\nout = 'o'\nno_augment = 1\n", "key 'no_augment' must be true or false"),
        ("index = 'a.csv\nout = 'o'\n", "is not valid TOML"),
        ("out = 'o'\n", "give --index, or 'sources'"),
        ("index = 'a.csv'\n", "--out is required"),
        ("out = 'o'\n[[sources]]\nindex = 'a.csv'\nkye = 'x'\n", "sources[1].kye: unknown key"),
    ],
)
def test_bad_run_files_are_one_line_errors(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(["train", "run", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cpcnn: error:") and message in err, err


def test_unreadable_or_unknown_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00bad")
    for name, message in (
        ("missing.toml", "does not exist"),
        ("run.json", "expected a .toml, .yaml or .yml file"),
        ("bad.yaml", "is not readable text"),
    ):
        assert main(["train", "run", "--config", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.yml"
    path.write_text(YAML)
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert main(["train", "run", "--config", str(path)]) == 1
    assert "install the 'train' extra" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "run", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--config CONFIG" in out and "(default Metadata_Treatment)" in out
