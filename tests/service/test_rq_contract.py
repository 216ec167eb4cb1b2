"""The rq internals ``cpcnn worker`` relies on, checked one by one so that an rq upgrade that moves
any of them fails here, by name, instead of as a worker that silently stops heartbeating its jobs.

The end-to-end checks (a real Redis, jobs through ``WorkerLoop``) are in ``test_redis_mode.py`` and
``tests/security/test_job_attempts.py``.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import redis
from cpcnn.service.queue import LEGACY_TASK_PREFIX, TASK_PATH, TASK_PREFIX
from cpcnn.service.worker.main import RQ_SURFACE, EmbedWorker, adopt_legacy_paths
from rq import Callback, Queue
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty
from rq.worker import BaseWorker

#: The parameters of each rq method we call or override, as tested.
SIGNATURES = {
    (BaseWorker, "execute_job"): ["self", "job", "queue"],
    (BaseWorker, "prepare_execution"): ["self", "job"],
    (BaseWorker, "perform_job"): ["self", "job", "queue", "execution"],
    (BaseWorker, "get_heartbeat_ttl"): ["self", "job", "working_time"],
    (BaseWorker, "maintain_heartbeats"): ["self", "job", "execution"],
    (BaseWorker, "heartbeat"): ["self", "timeout", "pipeline"],
    (BaseWorker, "clean_registries"): ["self"],
    (BaseWorker, "register_birth"): ["self"],
    (BaseWorker, "register_death"): ["self"],
    (ExecutionRegistry, "get_execution_ids"): ["self", "start", "end"],
    (ExecutionRegistry, "remove"): ["self", "execution", "pipeline"],
    (BaseDeathPenalty, "setup_death_penalty"): ["self"],
    (BaseDeathPenalty, "cancel_death_penalty"): ["self"],
}


def test_rq_is_the_tested_minor_release() -> None:
    major, minor = (int(part) for part in version("rq").split(".")[:2])
    assert (major, minor) == (3, 0), "cpcnn worker is tested against rq 3.0; re-run this file after an upgrade"


@pytest.mark.parametrize(("owner", "name"), list(SIGNATURES), ids=lambda x: getattr(x, "__name__", x))
def test_rq_method_signature(owner: type, name: str) -> None:
    method = getattr(owner, name, None)
    assert callable(method), f"rq {owner.__name__}.{name} is gone"
    assert list(inspect.signature(method).parameters) == SIGNATURES[(owner, name)], f"rq {owner.__name__}.{name} changed"


def test_surface_list_is_what_is_checked() -> None:
    checked = {name for (owner, name) in SIGNATURES if owner is BaseWorker}
    assert set(RQ_SURFACE["BaseWorker"]) - {"death_penalty_class"} == checked
    assert set(RQ_SURFACE["ExecutionRegistry"]) == {n for (o, n) in SIGNATURES if o is ExecutionRegistry}
    assert isinstance(BaseWorker.death_penalty_class, type)
    assert issubclass(EmbedWorker.death_penalty_class, BaseDeathPenalty)
    assert callable(getattr(Queue, "dequeue_any", None))
    assert list(inspect.signature(Queue.dequeue_any).parameters)[:3] == ["queues", "timeout", "connection"]


def test_only_execute_job_and_heartbeat_ttl_are_overridden() -> None:
    overridden = {name for name in vars(EmbedWorker) if callable(getattr(BaseWorker, name, None))}
    assert overridden == {"__init__", "execute_job", "get_heartbeat_ttl", "death_penalty_class"}


def test_job_attributes_we_read_and_write() -> None:
    """No Redis needed: jobs are built in memory (the connection is never used)."""
    connection = redis.Redis(host="127.0.0.1", port=1)
    job = Job.create(TASK_PATH, args=({"job_id": "x"},), connection=connection, serializer=JSONSerializer,
                     on_failure=Callback("cpcnn.service.worker.tasks.on_failure"))
    for name in RQ_SURFACE["Job"]:
        assert hasattr(job, name), f"rq Job.{name} is gone"
    assert job._failure_callback_name == "cpcnn.service.worker.tasks.on_failure"
    assert isinstance(job.execution_registry, ExecutionRegistry)
    assert Execution("e", job.id, connection).key.startswith("rq:")
    import rq.exceptions

    assert hasattr(rq.exceptions, "AbandonedJobError"), "the lost-worker signal of the failure callback is gone"


def test_legacy_task_paths_are_mapped() -> None:
    connection = redis.Redis(host="127.0.0.1", port=1)
    job = Job.create(LEGACY_TASK_PREFIX + "embed_job", args=({"job_id": "x"},), connection=connection,
                     serializer=JSONSerializer, on_failure=Callback(LEGACY_TASK_PREFIX + "on_failure"))
    adopt_legacy_paths(job)
    assert job.func_name == TASK_PATH == TASK_PREFIX + "embed_job"
    assert job.failure_callback is not None and job.failure_callback.__module__ == "cpcnn.service.worker.tasks"
    assert callable(job.func)
