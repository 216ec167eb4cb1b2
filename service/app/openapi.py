"""The OpenAPI document as the service really answers: errors are ``application/problem+json``.

FastAPI documents every error as ``application/json`` and request validation as its own
``HTTPValidationError``; both are rewritten here to the one ``Problem`` schema the handlers send.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cpcnn.errors import InputError
from cpcnn.schemas import MEDIA_PROBLEM

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_FASTAPI_ERRORS = {"#/components/schemas/HTTPValidationError", _PROBLEM_REF["$ref"]}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the rewritten (and cached) document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes,
            )
            app.openapi_schema = rewrite_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def rewrite_errors(schema: dict[str, Any]) -> dict[str, Any]:
    for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
        for status, response in operation.get("responses", {}).items():
            if not status.isdigit() or int(status) < 400:
                continue
            content = response.get("content", {})
            json_schema = content.get("application/json", {}).get("schema", {})
            if MEDIA_PROBLEM in content or json_schema.get("$ref") in _FASTAPI_ERRORS:
                response["content"] = {MEDIA_PROBLEM: {"schema": dict(_PROBLEM_REF)}}
                if status == "422":
                    response["description"] = InputError.title
    components = schema.get("components", {}).get("schemas", {})
    text = str(schema.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        if name in components and f"#/components/schemas/{name}" not in text:
            del components[name]
    return schema
