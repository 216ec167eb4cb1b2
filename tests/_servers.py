"""Real servers for tests: the app under uvicorn in a thread, a private redis-server, cpcnn processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - the thing is not up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve an ASGI app on a free port in a thread (lifespan included); yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: server.started, timeout=20, what="uvicorn to start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class RedisServer:
    """A private redis-server (AOF on, noeviction) that a test may stop, kill and restart."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
            "--save", "", "--protected-mode", "yes",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: client.ping(), timeout=10, what="redis-server to answer")
        client.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None


def cpcnn_process(args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cpcnn ARGS`` (the installed entry point's module) as a real process."""
    handle = open(log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "cpcnn.cli.main", *args], env={**os.environ, **env}, stdout=handle,
        stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )


def stop_process(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_http(url: str, *, timeout: float = 30) -> None:
    wait_until(lambda: httpx.get(url, timeout=1).status_code < 500, timeout=timeout, what=url)


def wait_ready(client: httpx.Client, timeout: float = 20) -> None:
    """Poll /readyz until 200 (the model is loaded and warmed)."""
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout=timeout, what="/readyz")
