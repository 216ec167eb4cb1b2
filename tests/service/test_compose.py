"""docker/: the compose file's structure, and every ``cpcnn`` command it runs exists in our CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from _servers import REPO_ROOT

from cpcnn.cli.main import build_parser

COMPOSE = REPO_ROOT / "docker" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """Every cpcnn invocation a service runs: an exec-form command, or the script of ``sh -c``."""
    command = service.get("command") or []
    entrypoint = service.get("entrypoint") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if entrypoint[-2:] == ["sh", "-c"] or entrypoint == ["sh", "-c"]:
        scripts = command
    elif command[:1] == ["cpcnn"]:
        return [command]
    else:
        scripts = [shlex.join(command[2:])] if command[:2] == ["sh", "-c"] else []
    found = []
    for script in scripts:
        for segment in re.split(r"\|\||&&|;", script):
            words = [w for w in shlex.split(segment) if not re.match(r"^\d?>", w) and w != "/dev/null"]
            if words[:1] == ["cpcnn"]:
                found.append(words)
    return found


def test_every_cpcnn_command_parses(compose: dict[str, Any]) -> None:
    parser = build_parser()
    seen = []
    for name, service in compose["services"].items():
        for words in _commands(service):
            args = parser.parse_args(words[1:])  # SystemExit (a test error) if unknown
            assert callable(args.func), (name, words)
            seen.append(words[1])
    assert {"serve", "worker", "models"} <= set(seen), seen


def test_redis_is_durable(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "redis-data" in compose["volumes"]
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_api_key_on_and_shared_volume(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert "CPCNN_API_KEY" in api["environment"] and ":?" in api["environment"]["CPCNN_API_KEY"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "worker-cpu", "model-init"):
        service = compose["services"][name]
        assert "cpcnn-data:/data" in service["volumes"], name
        assert service["environment"]["CPCNN_REDIS_URL"].startswith("redis://redis:6379"), name


def test_gpu_worker_and_cpu_profile(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.worker" and "cuda" in worker["command"]
    cpu = compose["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu and "cpu" in cpu["command"]


def test_dockerfiles_pin_the_runtime() -> None:
    worker = (REPO_ROOT / "docker" / "Dockerfile.worker").read_text()
    assert re.search(r"onnxruntime-gpu==\d+\.\d+\.\d+", worker) and "cudnn" in worker and "R580" in worker
    api = (REPO_ROOT / "docker" / "Dockerfile.api").read_text()
    assert ".[serve]" in api and "onnxruntime-gpu" not in api
    for dockerfile in (worker, api):
        for source in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M):
            for path in source.split():
                assert (REPO_ROOT / path).exists(), path


def test_plates_volume_is_shared_read_only_and_allowed(compose: dict[str, Any]) -> None:
    """Plate jobs read the lab's images where both the API (path checks) and the workers (decoding) see
    them, at the one path the API allows; results go to the data volume, so the images stay read-only."""
    from cpcnn.service.config import PlateSettings

    for name in ("api", "worker", "worker-cpu"):
        service = compose["services"][name]
        mounts = [v for v in service["volumes"] if v.endswith(":/plates:ro")]
        assert len(mounts) == 1, name
        roots = service["environment"]["CPCNN_PLATES__ROOTS"]
        assert PlateSettings.model_validate({"roots": roots}).roots == [Path("/plates")], name
