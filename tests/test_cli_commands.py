"""The one ``cpcnn`` command: the domain's commands plus each installed layer's, found by entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cpcnn.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _commands() -> set[str]:
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    return set(commands.choices)  # type: ignore[arg-type]


def test_layers_add_their_commands_through_entry_points() -> None:
    assert _commands() == {
        "embed", "profile", "aggregate", "sphering", "library", "match", "evaluate", "synth", "demo",  # the domain's own
        "models", "serve", "worker", "train",  # model_export, service, training
    }


def test_train_without_the_train_extra_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ModuleNotFoundError
    code = main(["train", "init", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "missing dependency 'torch'" in err and "pip install 'cpcnn[train]'" in err
    assert not (tmp_path / "x.pt").exists()


def test_python_m_training_is_an_alias_of_cpcnn_train() -> None:
    alias = subprocess.run(
        [sys.executable, "-m", "cpcnn.training", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert alias.stdout.startswith("usage: cpcnn train ")
    assert "    run " in alias.stdout and "    init " in alias.stdout
