"""Bad input gets a 4xx in the one error format, names the field, and writes nothing."""

from __future__ import annotations

import pytest

from tests.controlplane.test_isolation import database_state

KEYS = "/api/v1/organizations/org-a/keys/"
TEAMS = "/api/v1/organizations/org-a/teams/"


def post_raw(client, url, body: bytes, content_type="application/json"):
    return client.generic("POST", url, body, content_type=content_type)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2, 3]", b'"a string"', b"null", b'{"name": "\xff\xfe"}'],
)
def test_malformed_bodies(world, clients, body):
    before = database_state()
    response = post_raw(clients["owner_a"], TEAMS, body)
    assert 400 <= response.status_code < 500, response.content
    error = response.json()["error"]
    assert error["type"] and error["message"]
    assert database_state() == before


def test_unknown_field_is_named(world, clients):
    before = database_state()
    response = clients["owner_a"].post(
        TEAMS, {"slug": "a", "name": "A", "colour": "red"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"colour": ["Unknown field."]}
    assert database_state() == before


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"slug": "x" * 51, "name": "A"}, "slug"),
        ({"slug": "Bad Slug", "name": "A"}, "slug"),
        ({"slug": "ok", "name": "n" * 201}, "name"),
        ({"slug": 12, "name": ["list"]}, "name"),
        ({"name": "missing slug"}, "slug"),
    ],
)
def test_field_errors(world, clients, payload, field):
    before = database_state()
    response = clients["owner_a"].post(TEAMS, payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert field in response.json()["error"]["message"]
    assert database_state() == before


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"name": "k", "scopes": ["admin"]}, "scopes"),
        ({"name": "k", "scopes": "inference"}, "scopes"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "scopes": ["inference"], "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "k", "scopes": ["inference"], "team": "not-a-uuid"}, "team"),
        ({"name": "k", "scopes": ["inference"], "user": "nobody"}, "user"),
        ({"name": "k", "scopes": ["inference"], "allowed_models": "tiny-chat"}, "allowed_models"),
    ],
)
def test_key_field_errors(world, clients, payload, field):
    before = database_state()
    response = clients["owner_a"].post(KEYS, payload, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"]
    assert database_state() == before


def test_wrong_content_type(world, clients):
    response = post_raw(
        clients["owner_a"], TEAMS, b"slug=a&name=b", "application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "unsupported_media_type"


def test_oversize_body(world, clients):
    before = database_state()
    body = b'{"slug": "a", "name": "' + b"x" * 2_000_000 + b'"}'
    response = post_raw(clients["owner_a"], TEAMS, body)
    assert response.status_code in (400, 413)
    assert response.json()["error"]["message"]
    assert database_state() == before


def test_unknown_routes_and_methods(world, clients):
    response = clients["owner_a"].get("/api/v1/nothing-here/")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    response = clients["owner_a"].put(TEAMS, {}, format="json")
    assert response.status_code == 405
    response = clients["owner_a"].get("/api/v1/organizations/org-a/keys/not-a-uuid/")
    assert response.status_code == 404


def test_duplicate_slug_is_a_field_error(world, clients):
    clients["owner_a"].post(TEAMS, {"slug": "dup", "name": "A"}, format="json")
    response = clients["owner_a"].post(TEAMS, {"slug": "dup", "name": "B"}, format="json")
    assert response.status_code == 400 and "slug" in response.json()["error"]["fields"]


def test_bad_filters(world, clients):
    response = clients["owner_a"].get("/api/v1/organizations/org-a/audit-events/?since=yesterday")
    assert response.status_code == 400
    response = clients["owner_a"].get("/api/v1/organizations/org-a/audit-events/?page=999")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "value",
    ["0697-10-02T20:36:20.7-17:22", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"],
)
def test_extreme_dates_in_filters(world, clients, value):
    from urllib.parse import quote

    for resource in ("audit-events", "usage"):
        url = f"/api/v1/organizations/org-a/{resource}/?until={quote(value)}"
        response = clients["owner_a"].get(url)
        assert response.status_code in (200, 400), response.content
    assert clients["owner_a"].get("/api/v1/organizations/org-a/teams/").status_code == 200
