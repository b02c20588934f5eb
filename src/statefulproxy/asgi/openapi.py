"""The OpenAPI 3.1 document of the management API, generated from its route table.

Paths, operations and parameters come from ``routes_table.ROUTES``; the schemas are msgspec's
(``schema_components``) of the models the routes name. Built fresh on each call (no shared
mutable state) for the prefix the API is mounted at; paths are absolute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .api_codec import FieldSchema, query_fields, schema_components
from .api_models import SessionId
from .api_types import Error
from .routes_table import ERRORS, OPENAPI_PATH, PATH_ITEMS, ROUTES, Route

OPENAPI_PATH_SUFFIX = OPENAPI_PATH
API_VERSION = "1.0.0"
_REF = "#/components/schemas/{name}"

Schema = dict[str, Any]


def openapi_document(prefix: str = "/v1/sessions") -> dict[str, Any]:
    """The OpenAPI 3.1.0 document for the management API mounted at ``prefix``."""
    types: list[Any] = [SessionId, Error]
    for route in ROUTES:
        types += [kind for kind in (route.response, route.body) if kind is not None and kind not in types]
    found, schemas = schema_components(types, _REF)
    schema_of = dict(zip(map(id, types), found, strict=True))
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": schema_of[id(SessionId)]}
    paths: dict[str, Any] = {}
    for item in PATH_ITEMS:
        entry: dict[str, Any] = {"parameters": [session_id]} if "{session_id}" in item.path else {}
        for method, route in item.routes.items():
            entry[method.lower()] = _operation(route, schema_of)
        paths[prefix + item.path] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "statefulproxy session management API",
            "version": API_VERSION,
            "description": (
                "Server-side conversation sessions, scoped to the caller's credential: `Authorization: Bearer`, "
                "else `x-api-key`, else `api-key`; a request with none uses the anonymous scope. "
                "Timestamps are unix seconds. Errors use the OpenAI shape; `components.responses` also describes "
                "the errors a chat request on a session can get (409 ended, expired or full, 429 over a limit)."
            ),
        },
        "security": [{"bearer": []}, {"x-api-key": []}, {"api-key": []}, {}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {name: _error_response(description, status) for status, (name, description) in ERRORS.items()},
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key, or a `spcs_` secret."},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "api-key": {"type": "apiKey", "in": "header", "name": "api-key"},
            },
        },
    }


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _operation(route: Route, schema_of: dict[int, Schema]) -> Schema:
    operation: Schema = {"operationId": route.operation_id, "summary": route.summary}
    if route.public:
        operation["security"] = [{}]
    if route.query is not None:
        operation["parameters"] = _query_parameters(query_fields(route.query))
    if route.body is not None:
        operation["requestBody"] = {"required": False, "content": _json(schema_of[id(route.body)])}
    responses: Schema = {
        str(route.status): {"description": route.summary, "content": _json(schema_of[id(route.response)])}
    }
    for status in route.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    operation["responses"] = responses
    return operation


def _query_parameters(fields: Sequence[FieldSchema]) -> list[Schema]:
    parameters = []
    for field in fields:
        schema = dict(field.schema)
        parameter: Schema = {"name": field.name, "in": "query", "required": False}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        if schema.get("type") == "object":  # metadata[KEY]=VALUE
            parameter |= {"style": "deepObject", "explode": True}
        parameter["schema"] = schema
        parameters.append(parameter)
    return parameters


def _error_response(description: str, status: int) -> Schema:
    response: Schema = {"description": description, "content": _json({"$ref": _REF.format(name="Error")})}
    if status == 429:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response
