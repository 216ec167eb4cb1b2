"""The local model store: one folder per model holding ``model.onnx`` and ``manifest.json``.

Location: ``$CPCNN_HOME/models`` when ``CPCNN_HOME`` is set, else the user's cache dir. Writes are
atomic (temporary folder, then rename) so a crashed import never leaves a half model behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from cpcnn.errors import ConflictError, InputError, NotFoundError
from cpcnn.manifest import ModelManifest, sha256_file

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_MODEL = "cnn1"


def cpcnn_home() -> Path:
    """Root of cpcnn's local state (models, service data) for this user."""
    env = os.environ.get("CPCNN_HOME")
    return Path(env) if env else Path(platformdirs.user_cache_dir("cpcnn"))


def validate_model_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    return name


@dataclass(frozen=True)
class StoredModel:
    """A model on disk: the ONNX file and its contract."""

    onnx_path: Path
    manifest: ModelManifest


class ModelStore:
    """Named ONNX models under one folder."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cpcnn_home() / "models"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())

    def list(self) -> list[ModelManifest]:
        return [self.get(name).manifest for name in self.names()]

    def get(self, name: str) -> StoredModel:
        folder = self.root / validate_model_name(name)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"model {name!r} is not in the store at {self.root} (known: {known})")
        return StoredModel(folder / "model.onnx", ModelManifest.from_json(manifest_path.read_text()))

    def save(self, onnx_file: Path, manifest: ModelManifest, *, overwrite: bool = False) -> StoredModel:
        """Copy ``onnx_file`` into the store under ``manifest.name``; records its sha256."""
        name = validate_model_name(manifest.name)
        target = self.root / name
        if target.exists() and not overwrite:
            raise ConflictError(f"model {name!r} already exists in {self.root}; pass overwrite to replace it")
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = manifest.model_copy(update={"onnx_sha256": sha256_file(Path(onnx_file))})
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            shutil.copyfile(onnx_file, staging / "model.onnx")
            (staging / "manifest.json").write_text(manifest.to_json())
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StoredModel(target / "model.onnx", manifest)

    def remove(self, name: str) -> None:
        stored = self.get(name)
        shutil.rmtree(stored.onnx_path.parent)

    def resolve(self, name_or_path: str) -> StoredModel:
        """A store name, or a path to a ``.onnx`` file whose manifest is embedded or beside it."""
        path = Path(name_or_path)
        if path.suffix == ".onnx" or path.is_file():
            return load_model_file(path)
        return self.get(name_or_path)


def load_model_file(path: Path) -> StoredModel:
    """A ``.onnx`` file outside the store: manifest.json beside it (or ``<stem>.json``)."""
    if not path.is_file():
        raise NotFoundError(f"model file {path} does not exist")
    for candidate in (path.with_suffix(".json"), path.parent / "manifest.json"):
        if candidate.is_file():
            return StoredModel(path, ModelManifest.from_json(candidate.read_text()))
    raise InputError(f"model file {path} has no manifest.json beside it; import weights with 'cpcnn models import'")
