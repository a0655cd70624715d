"""The HTTP API's OpenAPI 3.1 document, generated from the route table and the worker's params models.

``herald-api`` cannot import the worker (``.ci/check-layout``), yet its document must describe exactly
what the worker validates. So it is generated here, offline, where both may be imported: every route of
:data:`gateway.api.routes.ROUTES`, with its query parameters or request body taken from the params model
the worker validates that method with (:data:`worker.requests.registry.METHODS`). The result is written
to ``gateway/api/openapi.json`` (package data the API serves at ``/api/openapi.json``; ``docs/openapi.json``
links to it) and checked for freshness in CI: ``python -m herald_ops.openapi --check``;
``.ci/deploy-checks --update-openapi`` rewrites it.

A route whose method the worker does not serve yet is still documented (with a free-form object), and
answers 501 until it does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.api.app import OPENAPI_PATH
from gateway.api.routes import ROUTES, Kind, Source
from gateway.api.translate import DEFAULT_LIMIT, DEFAULT_PAGE
from worker.requests.registry import METHODS

if TYPE_CHECKING:
    from gateway.api.routes import QueryParam, Route

VERSION: Final = "1"
ERROR_REF: Final = {"$ref": "#/components/responses/Error"}
_KIND_SCHEMA: Final[dict[Kind, dict[str, Any]]] = {
    Kind.INT: {"type": "integer"},
    Kind.BOOL: {"type": "boolean"},
    Kind.STR: {"type": "string"},
    Kind.LIST: {"type": "array", "items": {"type": "string"}},
    Kind.TRISTATE: {"type": "string", "enum": ["true", "false", "all"]},
}
_CONSTRAINTS: Final = ("minimum", "maximum", "default", "maxLength", "minLength", "pattern", "maxItems")
_HTTP_DEFAULTS: Final = {"page": DEFAULT_PAGE, "limit": DEFAULT_LIMIT}

_SCHEMAS: Final = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "data"],
                "properties": {
                    "code": {"type": "integer", "description": "JSON-RPC code (docs/protocol.md §5)"},
                    "message": {"type": "string"},
                    "data": {"description": "for 400: the offending field's dotted path"},
                },
            }
        },
    },
    "Notification": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "seq": {"type": "integer"},
            "type": {"type": "string"},
            "category": {"type": "string"},
            "title": {"type": "string"},
            "message": {"type": "string"},
            "data": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"},
            "read_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Page": {
        "type": "object",
        "required": [
            "data",
            "total",
            "page",
            "limit",
            "totalPages",
            "next_cursor",
            "unread_count",
            "unseen_count",
        ],
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Notification"}},
            "total": {"type": "integer"},
            "page": {"type": ["integer", "null"], "description": "null when paging by cursor"},
            "limit": {"type": "integer"},
            "totalPages": {"type": "integer"},
            "next_cursor": {"type": ["integer", "null"], "description": "pass as `before` for the next page"},
            "unread_count": {"type": "integer"},
            "unseen_count": {"type": "integer", "description": "the badge's count (amendment 10)"},
        },
    },
}


def _model_schema(method: str, schemas: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of ``method``'s params model (its ``$defs`` moved into ``schemas``), or ``None``."""
    entry = METHODS.get(method)
    if entry is None:
        return None
    schema = entry.params.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    return schema


def _query_parameter(param: QueryParam, model: dict[str, Any] | None, page_defaults: bool) -> dict[str, Any]:
    schema = dict(_KIND_SCHEMA[param.kind])
    found = ((model or {}).get("properties") or {}).get(param.name, {})
    for variant in [found, *found.get("anyOf", ())]:
        schema.update({key: variant[key] for key in _CONSTRAINTS if variant.get(key) is not None})
    if param.kind is Kind.TRISTATE and isinstance(schema.get("default"), bool):
        schema["default"] = str(schema["default"]).lower()  # the query-string spelling of the default
    if page_defaults and param.name in _HTTP_DEFAULTS:
        schema["default"] = _HTTP_DEFAULTS[param.name]
    description = param.description
    if param.aliases:
        description = f"{description} (also spelled {', '.join(param.aliases)})".strip()
    parameter: dict[str, Any] = {"name": param.name, "in": "query", "required": False, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    served = route.method in METHODS
    model = _model_schema(route.method, schemas)
    description = f"Same as the `{route.method}` request (docs/protocol.md)."
    if not served:
        description += " Answers 501 until this deployment's worker serves that method."
    operation: dict[str, Any] = {
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{route.verb} {route.path}").strip("_").lower(),
        "summary": route.summary,
        "description": description,
        "tags": list(route.tags),
        "x-herald-method": route.method,
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        + [_query_parameter(param, model, route.shape == "page") for param in route.query],
    }
    if route.source is Source.BODY:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": model or {"type": "object"}}},
        }
    result = {"$ref": "#/components/schemas/Page"} if route.shape == "page" else {}
    responses: dict[str, Any] = {
        "200": {
            "description": f"the `{route.method}` result",
            "content": {"application/json": {"schema": result}},
        }
    }
    if route.cacheable:
        responses["304"] = {"description": "`If-None-Match` named the current `ETag`"}
    codes = ["400", "401", "403" if route.admin else "", "429", "501" if not served else "", "503"]
    responses.update({code: ERROR_REF for code in codes if code})
    operation["responses"] = responses
    return operation


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = dict(_SCHEMAS)
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.verb.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Herald HTTP API",
            "version": VERSION,
            "description": "The inbox over HTTP for servers, mobile apps and scripts: the same methods, "
            "scoping and rate limits as the WebSocket protocol, answered by the worker.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {
                "Error": {
                    "description": "Herald's error object",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
            "schemas": schemas,
        },
    }


def render() -> str:
    """The document as the canonical text stored in the repository."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m herald_ops.openapi [--check] [--out PATH]``: write the document, or check it is current."""
    parser = argparse.ArgumentParser(prog="python -m herald_ops.openapi", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=OPENAPI_PATH, help="where to write (default: %(default)s)"
    )
    parser.add_argument("--check", action="store_true", help="fail when the file differs from a fresh one")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(
                f"{args.out} is stale; regenerate it with: .ci/deploy-checks --update-openapi",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} is current")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
