"""Zenodo fetch against a real HTTP server on 127.0.0.1: record JSON, Range resume, checksums, offline."""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cpcnn.model_export.fetch as fetch_module
import pytest
from _model_fixtures import keras_tensors, seeded_net, torch_threads, write_keras_h5
from cpcnn.model_export import cli as models_cli
from cpcnn.model_export.fetch import CNN1_FILENAME, RECORD_URL_ENV, fetch_cnn1

from cpcnn.errors import ConflictError, DownloadError
from cpcnn.model_store import ModelStore, StoredModel

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow

RECORD_PATH = "/api/records/7114558"
FILE_PATH = f"/files/{CNN1_FILENAME}"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@dataclass
class Zenodo:
    """What the fake server serves and how it misbehaves; ``requests`` logs (path, Range header)."""

    payload: bytes = b""
    checksum: str = ""
    layout: str = "list"  # "list": files = [...]; "entries": files = {"entries": {key: ...}}
    cut_first_download_at: int | None = None
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    base_url: str = ""

    def record(self) -> dict[str, Any]:
        entry = {
            "key": CNN1_FILENAME,
            "size": len(self.payload),
            "checksum": self.checksum or f"md5:{hashlib.md5(self.payload).hexdigest()}",
            "links": {"self": self.base_url + FILE_PATH},
        }
        if self.layout == "entries":
            entry["links"] = {"content": self.base_url + FILE_PATH, "self": self.base_url + "/meta"}
            return {"id": 7114558, "files": {"enabled": True, "entries": {CNN1_FILENAME: entry}}}
        return {"id": 7114558, "files": [{"key": "other.txt", "size": 1, "checksum": "md5:0"}, entry]}


def _handler(state: Zenodo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path == RECORD_PATH:
                self._send(200, json.dumps(state.record()).encode(), {"Content-Type": "application/json"})
            elif self.path == FILE_PATH:
                self._send_file()
            else:
                self._send(404, b"not found", {})

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_file(self) -> None:
            data, start = state.payload, 0
            ranged = self.headers.get("Range")
            if ranged and state.honour_range:
                start = int(ranged.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = state.cut_first_download_at
            if cut is not None and start == 0:
                state.cut_first_download_at = None
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    return Handler


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(RECORD_URL_ENV, raising=False)


@pytest.fixture
def zenodo() -> Iterator[Zenodo]:
    state = Zenodo(payload=bytes(range(256)) * 3000)  # 768 kB
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def imported(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the (tested elsewhere) import step; record which file it was given and its bytes."""
    calls: list[Path] = []

    def fake_import(path: Path, **kwargs: Any) -> StoredModel:
        calls.append(path)
        return StoredModel(path, None)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch_module, "import_weights", fake_import)
    return calls


def _fetch(zenodo: Zenodo, tmp_path: Path, **kwargs: Any) -> StoredModel:
    return fetch_cnn1(
        store=ModelStore(tmp_path / "models"),
        record_url=zenodo.base_url + RECORD_PATH,
        download_dir=tmp_path / "dl",
        progress=False,
        **kwargs,
    )


def test_fetch_downloads_verifies_and_imports_a_real_keras_file(tmp_path: Path, zenodo: Zenodo) -> None:
    h5 = write_keras_h5(tmp_path / "src.h5", keras_tensors(seeded_net(num_classes=3)))
    zenodo.payload = h5.read_bytes()
    stored = _fetch(zenodo, tmp_path)
    assert stored.manifest.name == "cnn1" and stored.manifest.feature_size == 672
    assert stored.manifest.source == CNN1_FILENAME
    assert stored.manifest.source_sha256 == hashlib.sha256(zenodo.payload).hexdigest()
    assert ModelStore(tmp_path / "models").names() == ["cnn1"]
    requests_before = len(zenodo.requests)
    with pytest.raises(ConflictError, match="already exists"):
        _fetch(zenodo, tmp_path)
    assert len(zenodo.requests) == requests_before


def test_interrupted_download_resumes_with_range(
    tmp_path: Path, zenodo: Zenodo, imported: list[Path]
) -> None:
    half = len(zenodo.payload) // 2
    zenodo.cut_first_download_at = half
    _fetch(zenodo, tmp_path)
    downloads = [r for r in zenodo.requests if r[0] == FILE_PATH]
    assert downloads == [(FILE_PATH, None), (FILE_PATH, f"bytes={half}-")]
    assert imported == [tmp_path / "dl" / CNN1_FILENAME]
    assert imported[0].read_bytes() == zenodo.payload
    assert not (tmp_path / "dl" / f"{CNN1_FILENAME}.part").exists()


def test_leftover_part_file_is_resumed(tmp_path: Path, zenodo: Zenodo, imported: list[Path]) -> None:
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / f"{CNN1_FILENAME}.part").write_bytes(zenodo.payload[:1000])
    _fetch(zenodo, tmp_path)
    assert [r for r in zenodo.requests if r[0] == FILE_PATH] == [(FILE_PATH, "bytes=1000-")]
    assert imported[0].read_bytes() == zenodo.payload


def test_server_ignoring_range_restarts_the_download(
    tmp_path: Path, zenodo: Zenodo, imported: list[Path]
) -> None:
    zenodo.honour_range = False
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / f"{CNN1_FILENAME}.part").write_bytes(b"garbage" * 10)
    _fetch(zenodo, tmp_path)
    assert imported[0].read_bytes() == zenodo.payload


def test_entries_layout_with_sha256_and_env_override(
    tmp_path: Path, zenodo: Zenodo, imported: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    zenodo.layout = "entries"
    zenodo.checksum = f"sha256:{hashlib.sha256(zenodo.payload).hexdigest()}"
    monkeypatch.setenv(RECORD_URL_ENV, zenodo.base_url + RECORD_PATH)
    fetch_cnn1(store=ModelStore(tmp_path / "models"), download_dir=tmp_path / "dl", progress=False)
    assert imported[0].read_bytes() == zenodo.payload
    # A second fetch finds the verified file and downloads nothing.
    fetch_cnn1(store=ModelStore(tmp_path / "models"), download_dir=tmp_path / "dl", progress=False)
    assert [r for r in zenodo.requests if r[0] == FILE_PATH] == [(FILE_PATH, None)]


def test_checksum_mismatch_removes_the_download(tmp_path: Path, zenodo: Zenodo, imported: list[Path]) -> None:
    zenodo.checksum = "md5:" + "0" * 32
    with pytest.raises(DownloadError, match="failed its md5 check"):
        _fetch(zenodo, tmp_path)
    assert list((tmp_path / "dl").iterdir()) == []
    assert imported == []


def test_missing_file_in_record(tmp_path: Path, zenodo: Zenodo, imported: list[Path]) -> None:
    with pytest.raises(
        DownloadError, match=r"no file 'nope.h5' \(files: other.txt, Cell_Painting_CNN_v1.hdf5\)"
    ):
        _fetch(zenodo, tmp_path, filename="nope.h5")


def test_offline_says_how_to_import_by_hand(tmp_path: Path, imported: list[Path]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        fetch_cnn1(record_url=f"http://127.0.0.1:{port}{RECORD_PATH}", download_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "seems offline" in message
    assert message.endswith(
        "download Cell_Painting_CNN_v1.hdf5 from https://zenodo.org/records/7114558 "
        "and run: cpcnn models import FILE --name cnn1"
    )


def test_cli_fetch_offline_raises_for_the_main_error_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(RECORD_URL_ENV, f"http://127.0.0.1:{port}{RECORD_PATH}")
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path))
    parser = argparse.ArgumentParser(prog="cpcnn")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", "fetch", "cnn1", "--no-progress"])
    with pytest.raises(DownloadError, match="seems offline"):
        args.func(args)
