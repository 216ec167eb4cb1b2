"""One error vocabulary: each kind declares its HTTP status, code and title once, and every table reads it."""

from __future__ import annotations

import pytest

from cpcnn import errors
from cpcnn.schemas import Problem


def test_docstring_tree_is_the_class_tree() -> None:
    drawn = [line.strip() for line in (errors.__doc__ or "").splitlines() if line.startswith("    ")]
    assert drawn == [line.strip() for line in errors.render_tree()]


def test_each_status_and_code_is_declared_once() -> None:
    declaring = [cls for cls in errors._domain_classes() if "http_status" in vars(cls)]
    assert len({cls.http_status for cls in declaring}) == len(declaring)
    assert len({cls.code for cls in declaring}) == len(declaring)
    assert set(errors.declared().values()) == set(declaring)
    for status in (400, 401, 404, 405, 406, 408, 409, 413, 415, 422, 500, 503):
        assert status in errors.declared(), status


def test_undeclared_kinds_inherit_their_parent_declaration() -> None:
    problem = Problem.from_error(errors.DownloadError("checksum mismatch"), "/x")
    assert (problem.status, problem.code, problem.title) == (500, "internal", "Internal error")
    assert problem.detail == "checksum mismatch" and problem.instance == "/x"


@pytest.mark.parametrize("kind", list(errors.declared().values()))
def test_problem_from_error_reads_the_declaration(kind: type[errors.CpcnnError]) -> None:
    error = kind("what went wrong") if kind is not errors.UnavailableError else kind("down", retry_after_s=7)
    problem = Problem.from_error(error)
    assert (problem.status, problem.code, problem.title) == (kind.http_status, kind.code, kind.title)
    assert problem.detail == str(error)
    assert problem.retry_after_s == (7 if kind is errors.UnavailableError else None)


def test_for_status_prefers_a_code_that_agrees_with_the_status() -> None:
    assert errors.for_status(413) is errors.PayloadTooLarge
    assert errors.for_status(413, "payload_too_large") is errors.PayloadTooLarge
    assert errors.for_status(413, "not_found") is errors.PayloadTooLarge
    assert errors.for_status(418) is None


def test_a_job_reports_any_bad_input_as_input_error() -> None:
    from cpcnn.service.worker.tasks import problem_for

    too_big = problem_for(errors.PayloadTooLarge("TIFF has more than 4096 pages"), "j1")
    assert (too_big.status, too_big.code, too_big.title) == (422, "input_error", "Invalid input")
    assert too_big.detail == "TIFF has more than 4096 pages" and too_big.instance == "/v1/jobs/j1"
    missing = problem_for(errors.NotFoundError("no model 'x'"), "j1")
    assert (missing.status, missing.code) == (404, "not_found")
    crashed = problem_for(RuntimeError("secret path /srv/x"), "j1")
    assert (crashed.status, crashed.code) == (500, "job_failed") and "secret" not in crashed.detail


def test_a_declaration_is_all_three_or_nothing() -> None:
    with pytest.raises(TypeError, match="together"):
        type("HalfDeclared", (errors.CpcnnError,), {}, http_status=418)
