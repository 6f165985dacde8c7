"""OpenAPI post-processing: document the one error format on every operation."""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string", "example": "invalid_request"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "description": "Per-field messages (validation errors only)",
                    "additionalProperties": True,
                },
            },
        }
    },
}

ERRORS = {
    "400": "Invalid input; `fields` names each bad field",
    "401": "No or invalid credentials",
    "403": "Authenticated, but the role or key scope does not allow this",
    "404": "Not found (or belongs to an organization you cannot see)",
    "405": "Method not allowed",
    "406": "Not acceptable",
    "409": "Conflicts with a concurrent change",
    "413": "Request body too large",
    "415": "Unsupported media type (send JSON)",
}


def add_error_responses(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS.items():
                responses.setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    return result
