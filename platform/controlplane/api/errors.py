"""One error format for the whole API:

    {"error": {"type": "invalid_request", "message": "...", "fields": {"name": ["..."]}}}

``fields`` is present for validation errors only. Django's own ValidationError and
PermissionDenied raised by service functions map to 400 and 403.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request",
    401: "authentication_failed",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _flatten(detail) -> list[str]:
    if isinstance(detail, dict):
        return [msg for value in detail.values() for msg in _flatten(value)]
    if isinstance(detail, list):
        return [msg for item in detail for msg in _flatten(item)]
    return [str(detail)]


def _fields(detail) -> dict:
    if isinstance(detail, dict):
        return {
            str(k): (_fields(v) if isinstance(v, dict) else [str(m) for m in _flatten(v)])
            for k, v in detail.items()
        }
    return {"non_field_errors": [str(m) for m in _flatten(detail)]}


def error_body(status_code: int, message: str, fields: dict | None = None) -> dict:
    body = {"type": _TYPES.get(status_code, "error"), "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def _from_django_validation(exc: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(exc, "error_dict"):
        return exceptions.ValidationError(
            {
                field: [str(m) for e in errs for m in e.messages]
                for field, errs in exc.error_dict.items()
            }
        )
    return exceptions.ValidationError({"non_field_errors": exc.messages})


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = _from_django_validation(exc)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    elif isinstance(exc, DataError):
        # A value the database cannot represent (a date out of range, say).
        log.info("data error turned into 400: %s", exc)
        exc = exceptions.ValidationError(
            {"non_field_errors": ["A value is outside what the database can store."]}
        )
    elif isinstance(exc, IntegrityError):
        # A race between two writers on a unique field: the loser gets a clear 409.
        log.info("integrity error turned into 409: %s", exc)
        exc = exceptions.APIException("The change conflicts with the current state; retry.")
        exc.status_code = status.HTTP_409_CONFLICT

    response = drf_exception_handler(exc, context)
    if response is None:
        log.exception("unhandled error in API view", exc_info=exc)
        return Response(
            error_body(500, "Internal error; the request id names it in the server log."),
            status=500,
        )
    code = response.status_code
    if isinstance(exc, exceptions.ValidationError):
        fields = _fields(exc.detail)
        names = [name for name in fields if name != "non_field_errors"]
        message = (
            f"Invalid {', '.join(names)}: {_flatten(exc.detail)[0]}"
            if names
            else _flatten(exc.detail)[0]
        )
        response.data = error_body(code, message, fields)
    else:
        detail = getattr(exc, "detail", None)
        response.data = error_body(code, " ".join(_flatten(detail)) if detail else str(exc))
    return response


def json_error_view(status_code: int, message: str):
    def view(request, exception=None, *args, **kwargs):
        return JsonResponse(error_body(status_code, message), status=status_code)

    return view
