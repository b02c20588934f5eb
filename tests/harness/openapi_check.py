"""Check real responses and request bodies against the management API's OpenAPI document.

    checker = OpenAPIChecker(openapi_document("/v1/sessions"))
    checker.check_response(response)                      # an httpx2.Response, template found from its path
    checker.check("GET", "/v1/sessions/{session_id}", 200, body, headers)
    checker.check_error(429, body, headers)               # an error answered outside the document (a chat turn)
    checker.request_body_errors("POST", "/v1/sessions", {"title": 1})   # [] when the document accepts it

Schemas are validated with JSON Schema draft 2020-12 (what OpenAPI 3.1 uses); ``$ref``s resolve
inside the document through a ``referencing`` registry. Every mismatch raises OpenAPIMismatch (an
AssertionError) whose message names the operation and each violation.

A method the document does not list for a path must be answered 405 with the error schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx2
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["DOCUMENT_URI", "OpenAPIChecker", "OpenAPIMismatch"]

DOCUMENT_URI = "urn:statefulproxy:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    429: "RateLimited",
    503: "StoreUnavailable",
}


class OpenAPIMismatch(AssertionError):
    """A response or body the document does not describe."""


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


class OpenAPIChecker:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self._validators: dict[str, Draft202012Validator] = {}
        # literal paths first: `{prefix}/openapi.json` wins over `{prefix}/{session_id}`
        templates = sorted(document["paths"], key=lambda template: "{" in template)
        self._templates = [(template, self._template_pattern(template)) for template in templates]

    def _template_pattern(self, template: str) -> re.Pattern[str]:
        pattern = re.escape(template)
        for name in re.findall(r"\{(\w+)\}", template):
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
        return re.compile(pattern)

    def template_for(self, path: str) -> str | None:
        """The path template of the document that ``path`` falls under, or None."""
        for template, pattern in self._templates:
            if pattern.fullmatch(path):
                return template
        return None

    def operations(self) -> list[tuple[str, str]]:
        """Every (METHOD, template) the document describes."""
        return [
            (method.upper(), template)
            for template, item in self.document["paths"].items()
            for method in METHODS
            if method in item
        ]

    def operation(self, method: str, template: str) -> dict[str, Any] | None:
        item = self.document["paths"].get(template)
        if item is None:
            raise OpenAPIMismatch(f"{template} is not a path of the document")
        operation: dict[str, Any] | None = item.get(method.lower())
        return operation

    def resolve(self, value: Mapping[str, Any]) -> Mapping[str, Any]:
        """``value`` with a local ``$ref`` (``#/components/...``) followed, repeatedly."""
        while "$ref" in value:
            resolved: Mapping[str, Any] = self.registry.resolver().lookup(DOCUMENT_URI + value["$ref"]).contents
            value = resolved
        return value

    def validator(self, pointer: str) -> Draft202012Validator:
        """A validator for the schema at JSON pointer ``pointer`` of the document."""
        if pointer not in self._validators:
            self._validators[pointer] = Draft202012Validator(
                {"$ref": f"{DOCUMENT_URI}#{pointer}"}, registry=self.registry
            )
        return self._validators[pointer]

    def schema_errors(self, pointer: str, value: Any) -> list[str]:
        errors = sorted(self.validator(pointer).iter_errors(value), key=lambda error: list(error.absolute_path))
        return [f"at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}" for error in errors]

    def request_body_errors(self, method: str, template: str, body: Any) -> list[str]:
        """What the document's request body schema finds wrong with ``body`` ([] when it is valid)."""
        operation = self.operation(method, template)
        if operation is None or "requestBody" not in operation:
            raise OpenAPIMismatch(f"{method} {template} documents no request body")
        pointer = _pointer("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")
        return self.schema_errors(pointer, body)

    def check(
        self, method: str, template: str, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        """Raise OpenAPIMismatch unless the document has this status for the operation and the body fits."""
        operation = self.operation(method, template)
        if operation is None:
            if status != 405:
                raise OpenAPIMismatch(f"{method} {template} is not documented, so it must be 405, not {status}")
            self.check_error(405, body, headers)
            return
        responses = operation["responses"]
        if str(status) not in responses:
            raise OpenAPIMismatch(f"{method} {template}: status {status} is not documented (only {sorted(responses)})")
        raw = responses[str(status)]
        if "$ref" in raw:
            pointer = raw["$ref"].removeprefix("#")
        else:
            pointer = _pointer("paths", template, method.lower(), "responses", str(status))
        self._check_response(f"{method} {template} -> {status}", pointer, body, headers)

    def check_error(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Check an error answered outside the document's operations against its shared error responses."""
        if status not in ERROR_RESPONSES:
            raise OpenAPIMismatch(f"status {status} is not one of the documented error statuses")
        pointer = _pointer("components", "responses", ERROR_RESPONSES[status])
        self._check_response(f"error {status}", pointer, body, headers)

    def _check_response(self, what: str, pointer: str, body: Any, headers: Mapping[str, str] | None) -> None:
        response = self.registry.resolver().lookup(f"{DOCUMENT_URI}#{pointer}").contents
        problems = self.schema_errors(pointer + _pointer("content", "application/json", "schema"), body)
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        for name, header in response.get("headers", {}).items():
            header = self.resolve(header)
            value = lowered.get(name.lower())
            if value is None:
                if header.get("required"):
                    problems.append(f"header {name} is missing")
                continue
            problems += [f"header {name}: {problem}" for problem in self._header_errors(header["schema"], value)]
        if problems:
            raise OpenAPIMismatch(f"{what}: " + "; ".join(problems) + f"\nbody: {body!r}")

    def _header_errors(self, schema: Mapping[str, Any], value: str) -> list[str]:
        parsed: Any = value
        if schema.get("type") == "integer":
            if not re.fullmatch(r"-?[0-9]+", value):
                return [f"{value!r} is not an integer"]
            parsed = int(value)
        return [error.message for error in Draft202012Validator(dict(schema)).iter_errors(parsed)]

    def check_response(self, response: httpx2.Response, template: str | None = None) -> None:
        """Check a real response: its JSON content type, status and body against its operation."""
        path = response.request.url.path
        template = template or self.template_for(path)
        if template is None:
            raise OpenAPIMismatch(f"{path} is under no path of the document")
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            raise OpenAPIMismatch(f"{response.request.method} {path}: content-type {content_type!r}, not JSON")
        self.check(response.request.method, template, response.status_code, response.json(), response.headers)
