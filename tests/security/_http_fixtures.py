"""A real ``cpcnn serve`` process for hostile-client tests, and its memory as the kernel counts it.

Attacks run against a separate process so that its peak resident memory (``VmHWM``) can be read
from ``/proc``; the peak is reset before each attack (``/proc/PID/clear_refs``) so it measures the
request, not start-up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from _servers import cpcnn_process, free_port, stop_process, wait_until
from _tiny_model import save_tiny_model
from cpcnn.service.job_store import JobSpec, JobState, JobStore

from cpcnn.schemas import ImageInfo, JobStatus

API_KEY = "security-test-key-0123456789abcdef"
#: Short limits so the slow-client tests take seconds.
HEADER_S = 2.0
BODY_IDLE_S = 2.0
#: The audit's acceptance: a hostile request may raise peak memory this much above idle.
RSS_BUDGET_BYTES = 100 * 2**20


@dataclass
class Served:
    """A running ``cpcnn serve``: its URL, process and data directory."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def client(self, *, key: bool = True, **kwargs: object) -> httpx.Client:
        headers = {"X-API-Key": API_KEY} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def reset_peak(self) -> int:
        """Forget the peak so far; returns the resident size now (the idle baseline), bytes."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return _status_kib(self.process.pid, "VmRSS") * 1024

    def peak(self) -> int:
        """Peak resident size since the last ``reset_peak``, bytes."""
        return _status_kib(self.process.pid, "VmHWM") * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def start_server(root: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Served:
    models = root / "models"
    if not models.is_dir():
        save_tiny_model(models)
    port = free_port()
    data_dir = root / "data"
    log = root / f"serve-{port}.log"
    base = {
        "CPCNN_HOME": str(root / "home"), "CPCNN_ENV": "prod", "CPCNN_API_KEY": API_KEY,
        "CPCNN_DATA_DIR": str(data_dir), "CPCNN_MODELS_DIR": str(models), "CPCNN_REDIS_URL": "",
        "CPCNN_HTTP__HEADER_S": str(HEADER_S), "CPCNN_HTTP__BODY_IDLE_S": str(BODY_IDLE_S),
        "CPCNN_WORKER__DEVICE": "cpu", "CPCNN_WORKER__THREADS": "1", "CPCNN_WORKER__SLOTS": "1",
    }
    process = cpcnn_process(["serve", "--port", str(port), *args], env=base | (env or {}), log=log)
    served = Served(url=f"http://127.0.0.1:{port}", port=port, process=process, data_dir=data_dir, log=log)
    try:
        wait_until(lambda: httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200, timeout=60,
                   what="cpcnn serve to be ready")
    except TimeoutError:
        stop_process(process)
        raise AssertionError(f"cpcnn serve did not start:\n{log.read_text()[-3000:]}") from None
    return served


@pytest.fixture(autouse=True, name="isolated_env")
def isolated_env_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built in a test come from its arguments, never from the caller's CPCNN_* or home."""
    for name in [name for name in os.environ if name.startswith("CPCNN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CPCNN_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module", name="served")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``cpcnn serve`` with an API key, embedded worker, tiny model and 2 s client timeouts."""
    server = start_server(tmp_path_factory.mktemp("served"))
    try:
        yield server
    finally:
        stop_process(server.process)


def stored_result(data_dir: Path, *, n_cells: int, feature_size: int, seed: int = 0) -> str:
    """A succeeded job with a random result, written as a worker writes it; returns its id."""
    rng = np.random.default_rng(seed)
    job_id = f"{rng.integers(0, 2**63):016x}{n_cells:016x}"
    jobs = JobStore(data_dir)
    spec = JobSpec(id=job_id, model="cnn1", normalization="minmax", metadata={"Metadata_Plate": "P1"},
                   n_locations=n_cells, image=ImageInfo(width=1000, height=1000, channels=["DNA"]))
    jobs.create(spec, np.zeros((1, 1, 1), np.float32), None)
    features = rng.standard_normal((n_cells, feature_size), dtype=np.float32)
    centers = rng.uniform(0, 1000, (n_cells, 2))
    jobs.write_result(job_id, features, centers)
    jobs.write_state(job_id, JobState(status=JobStatus.SUCCEEDED, n_cells=n_cells, feature_size=feature_size))
    return job_id


def raw_connection(port: int, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_within(sock: socket.socket, seconds: float, *, trickle: bytes = b"", every_s: float = 0.5) -> float | None:
    """Send ``trickle`` one byte every ``every_s`` until the server closes; seconds taken, or None.

    The server answering (a 408) and closing, or resetting, both count as closed.
    """
    start = time.monotonic()
    sock.settimeout(every_s)
    position = 0
    while time.monotonic() - start < seconds:
        try:
            if trickle:
                sock.sendall(trickle[position % len(trickle):position % len(trickle) + 1])
                position += 1
            data = sock.recv(65536)
            if not data or b"408" in data:
                if data:
                    _drain_until_closed(sock)
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes, bytes]:
    """One whole HTTP/1.1 response with a Content-Length: (status, head, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return int(head.split(b" ", 2)[1]), head, body


def _drain_until_closed(sock: socket.socket) -> None:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
