"""Boundaries the layout promises, checked on the source: import directions between layers, one installed
import name, a light domain package, short modules.

Imports are read with ``ast`` from every module, including those inside functions, so a lazy import
that reaches the wrong way fails here even though importing the module alone would not show it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("fastapi", "redis", "rq", "torch", "onnxruntime", "onnx", "h5py", "uvicorn")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

#: Installed layers: folder -> import name. Everything else in ``cpcnn`` is the domain package.
LAYER_FOLDERS = {"service": "cpcnn.service", "training": "cpcnn.training", "model_export": "cpcnn.model_export"}
#: Which layers each layer may import (itself included). The domain imports no layer above it.
ALLOWED = {
    "cpcnn": {"cpcnn"},
    "cpcnn.training": {"cpcnn", "cpcnn.training"},
    "cpcnn.model_export": {"cpcnn", "cpcnn.training", "cpcnn.model_export"},
    "cpcnn.service": {"cpcnn", "cpcnn.service"},
}
#: Third-party packages a layer must never import, even lazily: the domain and the service stay torch-free.
FORBIDDEN_LIBRARIES = {
    "cpcnn": {"torch", "h5py", "fastapi", "starlette", "uvicorn", "redis", "rq"},
    "cpcnn.service": {"torch", "h5py"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. cpcnn.service.app.main
    target: str  # the absolute name imported, e.g. cpcnn.store
    line: int
    top_level: bool  # at module scope (runs at import time) rather than inside a function

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def source_files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every module of the installed package."""
    roots = {"cpcnn": REPO / "cpcnn"} | {name: REPO / folder for folder, name in LAYER_FOLDERS.items()}
    for package, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, id(node) in top_level)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(module, base, node.lineno, id(node) in top_level)


ALL_IMPORTS = [found for module, path in source_files() for found in imports_of(module, path)]


def layer_of(name: str) -> str | None:
    """The layer a dotted name belongs to, or None for anything outside the package."""
    for layer in ("cpcnn.service", "cpcnn.training", "cpcnn.model_export"):
        if name == layer or name.startswith(layer + "."):
            return layer
    return "cpcnn" if name == "cpcnn" or name.startswith("cpcnn.") else None


def test_the_scanner_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text("from . import sibling\n\ndef run():\n    from cpcnn.service.app import main\n")
    found = list(imports_of("cpcnn.cli.probe", path))
    assert [(i.target, i.top_level) for i in found] == [("cpcnn.cli", True), ("cpcnn.service.app", False)]
    assert layer_of(found[1].target) == "cpcnn.service"


def test_layers_import_only_downwards() -> None:
    assert {layer_of(i.module) for i in ALL_IMPORTS} == set(ALLOWED)  # every layer was scanned
    wrong = [
        str(i) for i in ALL_IMPORTS
        if (target := layer_of(i.target)) is not None and target not in ALLOWED[layer_of(i.module) or ""]
    ]
    assert not wrong, wrong


def test_nothing_imports_the_old_top_level_names() -> None:
    old = set(LAYER_FOLDERS)
    files = [*source_files(), *((p.stem, p) for p in (REPO / "tests").rglob("*.py"))]
    files += [(p.stem, p) for folder in ("scripts", "bench", "examples") for p in (REPO / folder).rglob("*.py")]
    wrong = [str(i) for module, path in files for i in imports_of(module, path) if i.target.split(".")[0] in old]
    assert not wrong, wrong


def test_domain_and_service_import_no_torch_stack() -> None:
    wrong = [
        str(i) for i in ALL_IMPORTS
        if i.target.split(".")[0] in FORBIDDEN_LIBRARIES.get(layer_of(i.module) or "", set())
    ]
    assert not wrong, wrong


def test_domain_defers_inference_libraries_to_the_functions_that_use_them() -> None:
    """``import cpcnn.*`` stays fast and works without the 'serve' extra."""
    wrong = [
        str(i) for i in ALL_IMPORTS
        if layer_of(i.module) == "cpcnn" and i.top_level and i.target.split(".")[0] in HEAVY
    ]
    assert not wrong, wrong


def test_packages_list_is_every_folder_with_an_init() -> None:
    folders = {module for module, path in source_files() if path.name == "__init__.py"}
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == folders


def test_the_wheel_installs_one_import_name() -> None:
    """setuptools writes ``top_level.txt`` from the first part of each package name."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert {package.split(".")[0] for package in setuptools["packages"]} == {"cpcnn"}
    assert setuptools["package-dir"] == {name: folder for folder, name in LAYER_FOLDERS.items()}
    assert "py-modules" not in setuptools


def test_layer_commands_are_entry_points_of_their_layer() -> None:
    commands = PYPROJECT["project"]["entry-points"]["cpcnn.commands"]
    assert {layer_of(target.split(":")[0]) for target in commands.values()} == set(LAYER_FOLDERS.values())


def test_sdk_imports_only_httpx_and_numpy() -> None:
    code = "import sys, cpcnn.client; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(out.stdout.split())
    assert not loaded & {*HEAVY, "pandas", "pyarrow", "scipy", "tifffile"}


def test_modules_stay_short() -> None:
    long = []
    for module, path in source_files():
        lines = len(path.read_text().splitlines())
        if lines > 600:
            long.append(f"{module}: {lines}")
    assert not long, long


def expand_extras(*extras: str) -> set[str]:
    """Project names the given extras of cpcnn require, following ``cpcnn[...]`` references."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    names: set[str] = set()
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]
            if name == "cpcnn":
                pending += re.findall(r"[\w-]+", requirement.split("[", 1)[1])
            else:
                names.add(name)
    return names


def test_gpu_and_train_extras_never_install_the_cpu_runtime() -> None:
    assert "onnxruntime" not in expand_extras("gpu", "train")
    assert "onnxruntime-gpu" in expand_extras("gpu", "train")
    assert "onnxruntime" not in expand_extras("train")  # so it combines with either runtime
    assert {"onnxruntime", "torch", "h5py", "fastapi"} <= expand_extras("dev")


def test_extras_do_not_repeat_each_other() -> None:
    """A requirement is listed once; extras that share one reference each other instead."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    listed = [r for requirements in optional.values() for r in requirements if not r.startswith("cpcnn[")]
    repeated = {r for r in listed if listed.count(r) > 1}
    base = set(PYPROJECT["project"]["dependencies"])
    assert not repeated and not base & set(listed), (repeated, base & set(listed))
