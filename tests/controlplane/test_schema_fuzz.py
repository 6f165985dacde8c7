"""Property-based fuzzing of the whole REST API from its own OpenAPI schema
(schemathesis): no 5xx and no response that breaks the schema, for a platform
administrator and an organization's automation key alike."""

from __future__ import annotations

import pytest
import schemathesis
from controlplane.tenancy.services import create_api_key
from controlplane.wsgi import application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import SYSTEM

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application)

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
]


@pytest.fixture
def in_process_requests():
    """Keep the test's database connection open across WSGI requests, as Django's
    own test client does, so the fuzzed requests run inside the test transaction."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def manage_key(world, in_process_requests):
    _, secret = create_api_key(
        actor=SYSTEM, organization=world.org_a, name="fuzz", scopes=["manage"]
    )
    return secret


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_never_fails_or_breaks_its_schema(case, manage_key):
    # Aim half of the generated requests at a real organization and model.
    if "org_slug" in (case.path_parameters or {}) and hash(str(case.body)) % 2 == 0:
        case.path_parameters["org_slug"] = "org-a"
    if "model_alias" in (case.path_parameters or {}):
        case.path_parameters["model_alias"] = "tiny-chat"
    case.call_and_validate(headers={"Authorization": f"Bearer {manage_key}"}, checks=CHECKS)
