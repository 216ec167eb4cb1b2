"""``cpcnn serve`` (the API, with an in-process worker unless Redis is configured) and ``cpcnn worker``.

Options override ``CPCNN_*`` environment variables, which override defaults (see :mod:`cpcnn.service.config`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve",
        help="run the embedding API (embedded worker, or Redis + 'cpcnn worker' processes)",
        description="Run the HTTP API. Without --redis-url it embeds in-process and needs no other service.",
    )
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--model", dest="default_model", help="default model name in the store (default cnn1)")
    serve.add_argument("--redis-url", help="queue jobs on Redis for 'cpcnn worker' processes (CPCNN_REDIS_URL)")
    serve.add_argument("--data-dir", type=Path, help="job payloads and results (default $CPCNN_HOME/service)")
    serve.add_argument("--models-dir", type=Path, help="model store folder (default $CPCNN_HOME/models)")
    serve.add_argument("--api-key", help="require this X-API-Key (prefer CPCNN_API_KEY or a Docker secret)")
    serve.add_argument("--trusted-hosts", help="Host header values served, comma-separated ('*' = any; "
                       "default localhost,127.0.0.1,::1 and --host) (CPCNN_TRUSTED_HOSTS)")
    serve.add_argument("--header-timeout-s", type=float,
                       help="close clients whose request head takes longer (default 10) (CPCNN_HTTP__HEADER_S)")
    serve.add_argument("--body-idle-timeout-s", type=float,
                       help="close clients that pause longer inside a body (default 30) (CPCNN_HTTP__BODY_IDLE_S)")
    _add_tuning(serve)
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser(
        "worker",
        help="embed queued jobs from Redis with one model (one process per GPU)",
        description="Load the model once, warm it up, then take jobs from Redis, batching cells across them.",
    )
    worker.add_argument("--redis-url", help="Redis holding the queue (CPCNN_REDIS_URL)")
    worker.add_argument("--model", help="model name in the store (default cnn1)")
    worker.add_argument("--data-dir", type=Path, help="shared job data folder (default $CPCNN_HOME/service)")
    worker.add_argument("--models-dir", type=Path, help="model store folder (default $CPCNN_HOME/models)")
    worker.add_argument("--name", help="worker name in Redis (default host:pid)")
    worker.add_argument("--burst", action="store_true", default=None, help="exit once the queue is empty")
    _add_tuning(worker)
    worker.set_defaults(func=cmd_worker)


def _add_tuning(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference")
    group.add_argument("--device", choices=DEVICES, help="ONNX Runtime device (default auto: CUDA if available)")
    group.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    group.add_argument("--max-batch", type=int, help="cells per inference call (default 64 CPU, 256 GPU)")
    group.add_argument("--max-wait-ms", type=float, help="wait this long for other jobs' cells (default 20)")
    group.add_argument("--slots", type=int, help="jobs prepared concurrently (default 4)")
    group.add_argument("--heartbeat-s", type=int, help="worker heartbeat interval (default 5)")
    group.add_argument("--maintenance-s", type=int, help="how often abandoned jobs are requeued (default 60)")


def _tuning(args: argparse.Namespace) -> dict[str, Any] | None:
    names = ("device", "threads", "max_batch", "max_wait_ms", "slots", "heartbeat_s", "maintenance_s")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return given or None  # merged field by field with CPCNN_WORKER__* by pydantic-settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from cpcnn.service.app.main import create_app
    from cpcnn.service.app.server import server_config
    from cpcnn.service.config import ApiSettings, load_settings

    timeouts = {"header_s": args.header_timeout_s, "body_idle_s": args.body_idle_timeout_s}
    timeouts = {name: value for name, value in timeouts.items() if value is not None}
    settings: ApiSettings = _load(
        load_settings, ApiSettings, args,
        host=args.host, port=args.port, default_model=args.default_model, redis_url=args.redis_url,
        data_dir=args.data_dir, models_dir=args.models_dir, api_key=args.api_key,
        trusted_hosts=args.trusted_hosts, http=timeouts or None,
    )
    uvicorn.Server(server_config(create_app(settings), settings)).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from cpcnn.service.config import WorkerSettings, load_settings
    from cpcnn.service.worker.main import run_worker

    settings: WorkerSettings = _load(
        load_settings, WorkerSettings, args,
        redis_url=args.redis_url, model=args.model, data_dir=args.data_dir, models_dir=args.models_dir,
        name=args.name, burst=args.burst,
    )
    return run_worker(settings)


def _load(loader: Any, cls: Any, args: argparse.Namespace, **overrides: Any) -> Any:
    from pydantic import ValidationError

    from cpcnn.errors import InputError

    try:
        return loader(cls, worker=_tuning(args), **overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid settings: {problems}") from exc
