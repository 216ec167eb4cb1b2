"""Authentication and what the server tells callers without the key.

The key is checked from the request head, before any body byte is read; every path but the two
health probes needs it; the probes, docs and errors leak no host, process or store details; an
empty key is refused outside dev; the Host header must name this server (DNS rebinding).
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _http_fixtures import API_KEY, RSS_BUDGET_BYTES, Served, isolated_env_fixture, served_fixture  # noqa: F401
from _servers import live_server
from cpcnn.service.app.main import create_app
from cpcnn.service.config import ApiSettings
from pydantic import ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ids(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)


def _operations() -> list[tuple[str, str]]:
    schema = create_app(ApiSettings(env="dev")).openapi()
    return [(method.upper(), _ids(path)) for path, ops in schema["paths"].items() for method in ops]


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


def test_every_route_but_the_probes_needs_the_key(served: Served) -> None:
    with served.client(key=False) as client:
        for method, path in _operations():
            if path in ("/healthz", "/readyz"):
                continue
            _assert_401(client.request(method, path, content=b"{not json", headers={"Content-Type": "application/json"}))
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/v1", "/v1/nothing-here",
                     "/anything", "/V1/models", "/v1/models/../../metrics"):
            _assert_401(client.get(path))
        _assert_401(client.get("/v1/models", headers={"X-API-Key": API_KEY[:-1]}))
        _assert_401(client.get("/v1/models", headers={"X-API-Key": ""}))
    with served.client() as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_invalid_bodies_without_the_key_get_401_not_422(served: Served) -> None:
    with served.client(key=False) as client:
        _assert_401(client.post("/v1/transforms", content=b"{", headers={"Content-Type": "application/json"}))
        _assert_401(client.post("/v1/evaluate", json={"table_id": 5}))
        _assert_401(client.post("/v1/jobs", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=x"}))
        _assert_401(client.post("/v1/tables", files={"file": ("t.csv", b"a,b\n1,2\n")}))


@pytest.mark.slow
@pytest.mark.parametrize("path,content_type", [("/v1/transforms", "application/json"),
                                               ("/v1/jobs", "multipart/form-data; boundary=b")])
def test_unauthenticated_large_body_is_never_read(served: Served, path: str, content_type: str) -> None:
    """40 MB without the key: 401 from the head alone; the server's peak memory does not move."""
    if content_type.startswith("application/json"):
        body = b'{"table_id": "' + b"a" * (40 * 2**20) + b'", "controls": [' + b"1," * 10 + b"1]}"
    else:
        body = b"--b\r\nContent-Disposition: form-data; name=\"DNA\"; filename=\"x\"\r\n\r\n" + b"\0" * (40 * 2**20) + b"\r\n--b--\r\n"
    idle = served.reset_peak()
    with served.client(key=False) as client:
        for _ in range(3):
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            _assert_401(response)
            assert response.headers.get("connection") == "close"
    grown = served.peak() - idle
    assert grown < RSS_BUDGET_BYTES, f"peak memory grew by {grown / 2**20:.0f} MB"
    assert grown < 20 * 2**20, f"an unauthenticated 40 MB body still cost {grown / 2**20:.0f} MB"


def test_probes_show_only_what_a_load_balancer_needs(served: Served, tmp_path: Path) -> None:
    with served.client(key=False) as client:
        health, ready = client.get("/healthz"), client.get("/readyz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200 and set(ready.json()) == {"ready", "queue", "queue_reachable"}
    text = health.text + ready.text
    for secret in (socket.gethostname(), str(served.process.pid), str(served.data_dir.parent), "models", "version"):
        assert secret not in text
    with served.client() as client:
        detailed = client.get("/readyz").json()
        assert detailed["workers"] and detailed["workers"][0]["pid"] == served.process.pid
        assert client.get("/healthz").json()["version"]


def test_empty_key_is_refused_outside_dev(tmp_path: Path) -> None:
    for blank in ("", "   "):
        with pytest.raises(ValidationError, match="empty"):
            ApiSettings(api_key=blank)
        assert ApiSettings(env="dev", api_key=blank).api_key is None
    result = subprocess.run(
        [sys.executable, "-m", "cpcnn.cli.main", "serve", "--port", "1"], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "CPCNN_HOME": str(tmp_path), "CPCNN_API_KEY": ""},
    )
    assert result.returncode == 1, result.stderr
    assert "empty" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_key_outside_dev_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cpcnn.service.config"):
        ApiSettings(env="prod").warn_if_open()
    assert "NO API KEY" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cpcnn.service.config"):
        ApiSettings(env="prod", api_key="k" * 20).warn_if_open()
        ApiSettings(env="dev").warn_if_open()
    assert caplog.text == ""


@pytest.fixture
def keyless_app(tmp_path: Path) -> Callable[..., Any]:
    def start(**overrides: Any) -> Any:
        from _tiny_model import save_tiny_model

        if not (tmp_path / "models").is_dir():
            save_tiny_model(tmp_path / "models")
        settings = ApiSettings(**({"env": "dev", "data_dir": tmp_path / "data", "models_dir": tmp_path / "models"}
                                  | overrides))
        return live_server(create_app(settings))

    return start


def test_host_header_must_name_this_server(keyless_app: Callable[..., Any]) -> None:
    """Without a key a page on evil.example could reach 127.0.0.1 via DNS rebinding; its Host gives it away."""
    with keyless_app() as url, httpx.Client(base_url=url) as client:
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.", ""):
            response = client.get("/v1/models", headers={"Host": host})
            assert response.status_code == 400, host
            assert response.json()["code"] == "bad_request" and "CPCNN_TRUSTED_HOSTS" in response.json()["detail"]
        for host in ("localhost", "LOCALHOST:8000", "127.0.0.1:1234", "[::1]:8000", "::1"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
        # probes answer any Host (load balancers call them by IP) but tell an untrusted one nothing more
        assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).json() == {"status": "ok"}
        assert set(client.get("/readyz", headers={"Host": "evil.example"}).json()) == {"ready", "queue",
                                                                                       "queue_reachable"}
        assert "workers" in client.get("/readyz", headers={"Host": "localhost"}).json()
    with keyless_app(trusted_hosts="api.example.org,*.lab.example") as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/models", headers={"Host": "api.example.org"}).status_code == 200
        assert client.get("/v1/models", headers={"Host": "gpu1.lab.example:80"}).status_code == 200
        assert client.get("/v1/models", headers={"Host": "lab.example"}).status_code == 400
        assert client.get("/v1/models", headers={"Host": "localhost"}).status_code == 400
    with keyless_app(trusted_hosts="*") as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/models", headers={"Host": "anything.example"}).status_code == 200
    assert "myhost.internal" in ApiSettings(host="myhost.internal").allowed_hosts()


def test_trailing_slash_is_not_redirected_to_the_callers_host(keyless_app: Callable[..., Any]) -> None:
    with keyless_app() as url, httpx.Client(base_url=url, follow_redirects=False) as client:
        for path in ("/v1/models/", "/v1/jobs/", "/v1/tables/"):
            response = client.get(path, headers={"Host": "localhost"})
            assert response.status_code == 404, (path, response.status_code, response.headers.get("location"))
            assert "location" not in response.headers
            assert response.headers["content-type"] == "application/problem+json"


def test_ids_and_model_names_with_a_trailing_newline_do_not_exist() -> None:
    """Python's ``$`` matches before a final newline: every id and name check must be a full match."""
    from cpcnn.service.job_store import check_job_id
    from cpcnn.service.profile_store import check_id

    from cpcnn.client._tables import _ID as client_id
    from cpcnn.errors import CpcnnError
    from cpcnn.model_store import validate_model_name

    job_id = "0123456789abcdef0123456789abcdef"
    assert check_job_id(job_id) == job_id and check_id(job_id, "table") == job_id
    assert validate_model_name("cnn1") == "cnn1"
    for bad in (job_id + "\n", job_id + "\r\n", "\n" + job_id):
        with pytest.raises(CpcnnError):
            check_job_id(bad)
        with pytest.raises(CpcnnError):
            check_id(bad, "table")
        assert client_id.fullmatch(bad) is None
    for bad in ("cnn1\n", "cnn1\r\n"):
        with pytest.raises(CpcnnError):
            validate_model_name(bad)


def test_trailing_newline_over_http(served: Served) -> None:
    with served.client() as client:
        for path in ("/v1/jobs/0123456789abcdef0123456789abcdef%0A", "/v1/models/cnn1%0A",
                     "/v1/tables/0123456789abcdef0123456789abcdef%0A", "/v1/transforms/0123456789abcdef0123456789abcdef%0A"):
            response = client.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert "does not exist" in response.json()["detail"] or "invalid" in response.json()["detail"]
