"""The platform administrator's pages (/console/platform/): only platform
administrators see them (everyone else signed in gets a 404), every write goes
through a service and leaves an audit event, refused writes change nothing, stored
names render escaped, upstream keys are never rendered, set-password links work once
and for 72 hours, and "verify chain" runs as a Celery task that finds a broken row."""

from __future__ import annotations

import datetime as dt
import re
from unittest import mock

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import Model, ModelVersion, Upstream
from controlplane.catalog.secrets import decrypt_secret
from controlplane.catalog.services import create_upstream
from controlplane.console.platform.users import SetPasswordTokens, set_password_tokens
from controlplane.fleet.models import ArtifactFetch, Node, NodeState, Replica, ReplicaState
from controlplane.fleet.services import create_deployment, create_node, create_pool
from controlplane.tenancy.models import ApiKey, Membership, Organization
from controlplane.tenancy.services import create_api_key
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from tests.conftest import SYSTEM

pytestmark = pytest.mark.django_db

User = get_user_model()
CALLERS = ("alice", "bob", "victor", "oscar", "root", None)
SIGNIN = "/console/signin/"
NOBODY = (404, 404, 404, 404)  # owner A, member A, viewer A, admin B: not revealed

# url name -> (method, expected status per caller: owner A, member A, viewer A,
# admin B, platform admin, anonymous). 302 for anonymous = sent to sign in.
ROLE_TABLE = {
    "platform": ("GET", (*NOBODY, 200, 302)),
    "platform-organizations": ("GET", (*NOBODY, 200, 302)),
    "platform-organization-create": ("POST", (*NOBODY, 302, 302)),
    "platform-organization-delete": ("POST", (*NOBODY, 302, 302)),
    "platform-catalog": ("GET", (*NOBODY, 200, 302)),
    "platform-model-create": ("POST", (*NOBODY, 302, 302)),
    "platform-model": ("GET", (*NOBODY, 200, 302)),
    "platform-model-edit": ("POST", (*NOBODY, 302, 302)),
    "platform-version-create": ("POST", (*NOBODY, 302, 302)),
    "platform-version-edit": ("POST", (*NOBODY, 302, 302)),
    "platform-version-remote-code": ("POST", (*NOBODY, 302, 302)),
    "platform-version-fetch": ("POST", (*NOBODY, 302, 302)),
    "platform-upstream-create": ("POST", (*NOBODY, 302, 302)),
    "platform-upstream-edit": ("POST", (*NOBODY, 302, 302)),
    "platform-fleet": ("GET", (*NOBODY, 200, 302)),
    "platform-node-cordon": ("POST", (*NOBODY, 302, 302)),
    "platform-users": ("GET", (*NOBODY, 200, 302)),
    # The one-time link is the response itself (shown once).
    "platform-user-create": ("POST", (*NOBODY, 200, 302)),
    "platform-user-link": ("POST", (*NOBODY, 200, 302)),
    "platform-user-deactivate": ("POST", (*NOBODY, 302, 302)),
    "platform-audit": ("GET", (*NOBODY, 200, 302)),
    "platform-audit-verify": ("POST", (*NOBODY, 302, 302)),
    "platform-audit-verify-result": ("GET", (*NOBODY, 200, 302)),
    # Public: whoever holds a valid link may open it.
    "set-password": ("GET", (200, 200, 200, 200, 200, 200)),
}

UPSTREAM_KEY = "sk-upstream-very-secret-4711"


@pytest.fixture(autouse=True)
def eager_celery():
    """Celery tasks run in the test's process (nothing reaches a broker)."""
    from controlplane.celery import app

    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = False


@pytest.fixture
def setup(world):
    """The world plus a pool, a node with one GPU and a replica on it, and an upstream."""
    version = ModelVersion.objects.get(model=world.model)
    version.parameter_count = 1_000_000_000
    version.dtype = "bfloat16"
    version.save()
    pool = create_pool(actor=SYSTEM, name="gpu")
    node = create_node(actor=SYSTEM, name="gpu-1", pool=pool, address="10.0.0.1")
    Node.objects.filter(pk=node.pk).update(
        state=NodeState.READY,
        last_heartbeat=timezone.now(),
        inventory={"gpus": [{"index": 0, "memory_total_mib": 81920, "name": "H100"}]},
    )
    deployment = create_deployment(
        actor=SYSTEM, organization=world.org_a, name="chat", model="tiny-chat", pool=pool
    )
    Replica.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=[0],
        memory_mib=20480,
        port=9000,
        state=ReplicaState.READY,
        spec_hash=deployment.spec_hash,
    )
    upstream = create_upstream(
        actor=SYSTEM,
        model=world.model,
        name="manual",
        base_url="http://10.0.0.9:8000",
        served_model_name="tiny",
        api_key=UPSTREAM_KEY,
    )
    world.version, world.node, world.upstream = version, Node.objects.get(pk=node.pk), upstream
    return world


def link_path(user) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return reverse(
        "console:set-password",
        kwargs={"uidb64": uid, "token": set_password_tokens.make_token(user)},
    )


def url_for(name: str, world) -> str:
    kwargs: dict = {}
    if name == "platform-organization-delete":
        kwargs = {"slug": "org-b"}
    elif name.startswith(("platform-model", "platform-version", "platform-upstream")):
        if name != "platform-model-create":
            kwargs = {"alias": "tiny-chat"}
        if name.startswith("platform-version-") and name != "platform-version-create":
            kwargs["version_id"] = world.version.pk
        if name == "platform-upstream-edit":
            kwargs["upstream_id"] = world.upstream.pk
    elif name == "platform-node-cordon":
        kwargs = {"name": "gpu-1"}
    elif name in ("platform-user-link", "platform-user-deactivate"):
        kwargs = {"user_id": world.bob.pk}
    elif name == "set-password":
        return link_path(world.bob)
    return reverse(f"console:{name}", kwargs=kwargs)


VERSION_FORM = {
    "version": "v1",
    "source_type": "local",
    "local_path": "/models/tiny-chat",
    "dtype": "bfloat16",
    "quantization": "none",
    "parameter_count": "1000000000",
    "context_length": "4096",
    "is_default": "on",
}
MODEL_FORM = {
    "task": "chat",
    "license_id": "mit",
    "openness": "open-weights",
    "commercial_use": "on",
    "display_name": "Tiny chat",
}


def form_for(name: str) -> dict:
    return {
        "platform-organization-create": {"slug": "org-new", "name": "New", "owner": "alice"},
        "platform-model-create": {**MODEL_FORM, "alias": "new-model"},
        "platform-model-edit": MODEL_FORM,
        "platform-version-create": {**VERSION_FORM, "version": "v2"},
        "platform-version-edit": VERSION_FORM,
        "platform-version-remote-code": {"approve": "1"},
        "platform-upstream-create": {
            "name": "second",
            "base_url": "http://10.0.0.8:8000",
            "served_model_name": "tiny",
            "api_key": "sk-second",
        },
        "platform-upstream-edit": {
            "base_url": "http://10.0.0.9:8001",
            "served_model_name": "tiny",
            "enabled": "on",
        },
        "platform-node-cordon": {"cordoned": "1"},
        "platform-user-create": {"username": "newcomer", "email": "new@example.org"},
    }.get(name, {})


def state() -> tuple:
    """Everything a platform write could change, for "refused: nothing changed"."""
    return (
        AuditEvent.objects.count(),
        Organization.objects.count(),
        User.objects.filter(is_active=True).count(),
        Model.objects.count(),
        list(ModelVersion.objects.values_list("context_length", "trust_remote_code")),
        list(Upstream.objects.values_list("base_url", "api_key_encrypted")),
        list(Node.objects.values_list("cordoned", flat=True)),
        ArtifactFetch.objects.count(),
    )


@pytest.mark.parametrize("name", sorted(ROLE_TABLE))
@pytest.mark.parametrize("index", range(len(CALLERS)), ids=[str(c) for c in CALLERS])
def test_role_table(setup, name, index):
    caller = CALLERS[index]
    method, expected = ROLE_TABLE[name]
    client = Client()
    if caller:
        client.force_login(getattr(setup, caller))
    url = url_for(name, setup)
    before = state()
    response = client.post(url, form_for(name)) if method == "POST" else client.get(url)
    assert response.status_code == expected[index], (name, caller, response.content[:300])
    if caller is None and response.status_code == 302:
        assert response["Location"].startswith(SIGNIN)
    if method == "POST" and (response.status_code == 404 or caller is None):
        assert state() == before, "a refused write changed something"
    if method == "POST" and caller == "root" and name != "platform-audit-verify":
        assert state() != before, "an accepted write changed nothing"


def test_get_on_a_write_route_is_refused(setup):
    client = Client()
    client.force_login(setup.root)
    for name in ("platform-organization-create", "platform-node-cordon", "platform-audit-verify"):
        assert client.get(url_for(name, setup)).status_code == 405


def test_post_without_csrf_token_is_refused(setup):
    client = Client(enforce_csrf_checks=True)
    client.force_login(setup.root)
    before = state()
    response = client.post(url_for("platform-node-cordon", setup), {"cordoned": "1"})
    assert response.status_code == 403
    assert state() == before


def root_client(world) -> Client:
    client = Client()
    client.force_login(world.root)
    return client


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


# --------------------------------------------------------------------------- organizations
def test_create_organization_with_an_existing_owner(setup):
    response = root_client(setup).post(
        reverse("console:platform-organization-create"),
        {"slug": "org-c", "name": "Org C", "owner": "bob"},
    )
    assert response.status_code == 302
    org = Organization.objects.get(slug="org-c")
    assert Membership.objects.get(organization=org, user=setup.bob).role == "owner"
    assert AuditEvent.objects.filter(action="organization.create", target_id=str(org.pk)).exists()
    assert last_event().actor_label == "root"


def test_create_organization_with_a_new_owner_gives_a_link_once(setup):
    client = root_client(setup)
    response = client.post(
        reverse("console:platform-organization-create"),
        {"slug": "org-c", "name": "Org C", "owner": "carol", "new_owner": "on"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    carol = User.objects.get(username="carol")
    assert not carol.has_usable_password()
    assert Membership.objects.get(user=carol).organization.slug == "org-c"
    link = re.search(rb'id="link" class="secret" readonly value="([^"]+)"', response.content)
    path = link.group(1).decode().removeprefix("http://testserver")
    assert path.startswith("/console/set-password/")
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"user.create", "user.set_password_link", "organization.create"} <= actions
    # The link is in that response only.
    assert path.encode() not in client.get(reverse("console:platform-users")).content


def test_create_organization_errors_are_on_the_form_and_change_nothing(setup):
    client = root_client(setup)
    before = state()
    unknown = client.post(
        reverse("console:platform-organization-create"),
        {"slug": "org-c", "name": "Org C", "owner": "nobody"},
    )
    assert unknown.status_code == 400 and b'id="org-owner-error"' in unknown.content
    taken = client.post(
        reverse("console:platform-organization-create"),
        {"slug": "org-a", "name": "Again", "owner": "carol", "new_owner": "on"},
    )
    assert taken.status_code == 400 and b'id="org-slug-error"' in taken.content
    # The new owner was rolled back with the organization.
    assert state() == before and not User.objects.filter(username="carol").exists()


def test_delete_organization(setup):
    response = root_client(setup).post(
        reverse("console:platform-organization-delete", kwargs={"slug": "org-b"})
    )
    assert response.status_code == 302
    assert not Organization.objects.filter(slug="org-b").exists()
    assert last_event().action == "organization.delete"
    body = root_client(setup).get(reverse("console:platform-organizations")).content
    assert b'class="confirm" data-confirm="Delete the organization Org A' in body


# --------------------------------------------------------------------------- catalog
def test_model_create_and_edit(setup):
    client = root_client(setup)
    response = client.post(
        reverse("console:platform-model-create"), {**MODEL_FORM, "alias": "new-model"}
    )
    assert response.status_code == 302
    model = Model.objects.get(alias="new-model")
    assert model.license_id == "mit" and model.commercial_use
    assert last_event().action == "model.create"
    response = client.post(
        reverse("console:platform-model-edit", kwargs={"alias": "new-model"}),
        {**MODEL_FORM, "license_id": "apache-2.0"},
    )
    assert response.status_code == 302
    assert Model.objects.get(alias="new-model").license_id == "apache-2.0"
    assert last_event().action == "model.update"


def test_model_errors_are_shown_on_the_form(setup):
    before = state()
    response = root_client(setup).post(
        reverse("console:platform-model-create"), {**MODEL_FORM, "alias": "Bad Alias!"}
    )
    assert response.status_code == 400
    assert b'id="new-model-alias-error"' in response.content
    assert b'aria-describedby="new-model-alias-error"' in response.content
    assert state() == before


def test_version_create_edit_and_errors(setup):
    client = root_client(setup)
    url = reverse("console:platform-version-create", kwargs={"alias": "tiny-chat"})
    response = client.post(
        url,
        {
            **VERSION_FORM,
            "version": "v2",
            "source_type": "huggingface",
            "hf_repo": "acme/tiny",
            "revision": "a" * 40,
            "engine_args": '{"max_num_seqs": 8}',
        },
    )
    assert response.status_code == 302
    v2 = ModelVersion.objects.get(model=setup.model, version="v2")
    assert v2.hf_repo == "acme/tiny" and v2.engine_args == {"max_num_seqs": 8}
    assert last_event().action == "model_version.create"
    before = state()
    bad = client.post(
        url, {**VERSION_FORM, "version": "v3", "source_type": "huggingface", "hf_repo": "x/y"}
    )
    assert bad.status_code == 400 and b"Pin the revision" in bad.content
    bad_json = client.post(url, {**VERSION_FORM, "version": "v3", "engine_args": "{nope"})
    assert bad_json.status_code == 400 and b"Give a JSON object" in bad_json.content
    assert state() == before
    page = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"}))
    assert b"<code>" + b"a" * 40 + b"</code>" in page.content  # the pinned revision
    assert b"none yet (recorded on the first fetch)" in page.content


def test_remote_code_approval_records_the_approver(setup):
    client = root_client(setup)
    url = reverse(
        "console:platform-version-remote-code",
        kwargs={"alias": "tiny-chat", "version_id": setup.version.pk},
    )
    assert client.post(url, {"approve": "1"}).status_code == 302
    setup.version.refresh_from_db()
    assert setup.version.trust_remote_code
    assert setup.version.trust_remote_code_approved_by == setup.root
    assert last_event().action == "model_version.update"
    page = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"}))
    assert b"approved by root" in page.content
    assert client.post(url, {"approve": "0"}).status_code == 302
    setup.version.refresh_from_db()
    assert not setup.version.trust_remote_code
    assert setup.version.trust_remote_code_approved_by is None


def test_fetch_progress_and_manifest_status(setup):
    client = root_client(setup)
    url = reverse(
        "console:platform-version-fetch",
        kwargs={"alias": "tiny-chat", "version_id": setup.version.pk},
    )
    assert client.post(url, {"node": str(setup.node.pk)}).status_code == 302
    fetch = ArtifactFetch.objects.get(model_version=setup.version)
    assert fetch.node == setup.node and last_event().action == "artifact.fetch"
    ArtifactFetch.objects.filter(pk=fetch.pk).update(
        state="running", bytes_done=512 * 1024**2, bytes_total=1024**3, files_done=1, files_total=3
    )
    ModelVersion.objects.filter(pk=setup.version.pk).update(
        file_manifest={"a.bin": "0" * 64, "b.json": "1" * 64}
    )
    body = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"})).content
    assert b'<progress max="1073741824" value="536870912"' in body
    assert b"50%" in body and b"1/3 files" in body and b"Running" in body
    assert b"recorded: 2 files" in body
    assert b'hx-trigger="every 5s"' in body  # a fetch runs: the table refreshes itself
    part = client.get(
        reverse("console:platform-model", kwargs={"alias": "tiny-chat"}), {"part": "versions"}
    ).content
    assert b'<div id="versions"' in part and b"<html" not in part
    assert b"<h1>" not in part and b"50%" in part
    ArtifactFetch.objects.filter(pk=fetch.pk).update(state="done", bytes_done=1024**3)
    body = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"})).content
    assert b'hx-trigger="every 5s"' not in body and b"Done" in body
    assert client.post(url, {"node": "not-a-node"}).status_code == 400


def test_upstream_key_is_write_only(setup):
    client = root_client(setup)
    page = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"}))
    assert page.status_code == 200
    assert UPSTREAM_KEY.encode() not in page.content
    # Not even its ciphertext.
    assert setup.upstream.api_key_encrypted.encode() not in page.content
    assert b"set (never shown)" in page.content
    # A refused create does not echo the key back either.
    refused = client.post(
        reverse("console:platform-upstream-create", kwargs={"alias": "tiny-chat"}),
        {
            "name": "manual",
            "base_url": "http://10.0.0.9",
            "served_model_name": "x",
            "api_key": "sk-typed-1",
        },
    )
    assert refused.status_code == 400 and b"sk-typed-1" not in refused.content
    edit = reverse(
        "console:platform-upstream-edit",
        kwargs={"alias": "tiny-chat", "upstream_id": setup.upstream.pk},
    )
    # Blank keeps the stored key.
    form = {"base_url": "http://10.0.0.9:8001", "served_model_name": "tiny", "enabled": "on"}
    assert client.post(edit, form).status_code == 302
    setup.upstream.refresh_from_db()
    assert decrypt_secret(setup.upstream.api_key_encrypted) == UPSTREAM_KEY
    assert setup.upstream.base_url == "http://10.0.0.9:8001"
    # A new key replaces it; the audit log says so without the key.
    assert client.post(edit, {**form, "api_key": "sk-new-0815"}).status_code == 302
    setup.upstream.refresh_from_db()
    assert decrypt_secret(setup.upstream.api_key_encrypted) == "sk-new-0815"
    event = last_event()
    assert event.action == "upstream.update" and "sk-new-0815" not in str(event.changes)
    page = client.get(reverse("console:platform-model", kwargs={"alias": "tiny-chat"}))
    assert b"sk-new-0815" not in page.content
    assert client.post(edit, {**form, "clear_api_key": "on"}).status_code == 302
    setup.upstream.refresh_from_db()
    assert not decrypt_secret(setup.upstream.api_key_encrypted)


# --------------------------------------------------------------------------- fleet
def test_fleet_shows_gpu_memory_as_text_and_meter(setup):
    body = root_client(setup).get(reverse("console:platform-fleet")).content.decode()
    assert "gpu-1" in body and "Ready" in body
    assert re.search(r"last heartbeat \d+ s ago", body)
    # reserved 20480 of 81920 MiB, free 61440, by org-a/chat; as text and as a <meter>.
    assert "<td>20480</td>" in body and "<td>61440</td>" in body and "<td>81920</td>" in body
    assert '<meter min="0" max="81920" value="20480"' in body
    assert "org-a/chat: 20480 MiB" in body
    assert " style=" not in body and "<style" not in body


def test_cordon_and_uncordon(setup):
    client = root_client(setup)
    url = reverse("console:platform-node-cordon", kwargs={"name": "gpu-1"})
    assert client.post(url, {"cordoned": "1"}).status_code == 302
    node = Node.objects.get(name="gpu-1")
    assert node.cordoned and node.state == "cordoned"
    assert last_event().action == "node.cordon"
    assert b"Uncordon gpu-1" in client.get(reverse("console:platform-fleet")).content
    assert client.post(url, {"cordoned": "0"}).status_code == 302
    assert not Node.objects.get(name="gpu-1").cordoned
    assert last_event().action == "node.uncordon"


# --------------------------------------------------------------------------- users
def new_user_link(client) -> str:
    response = client.post(reverse("console:platform-user-create"), {"username": "newcomer"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    link = re.search(rb'id="link" class="secret" readonly value="([^"]+)"', response.content)
    return link.group(1).decode().removeprefix("http://testserver")


def test_set_password_link_works_once(setup):
    path = new_user_link(root_client(setup))
    user = User.objects.get(username="newcomer")
    assert not user.has_usable_password()
    assert last_event().action == "user.set_password_link"
    visitor = Client()
    page = visitor.get(path)
    assert page.status_code == 200 and page["Cache-Control"] == "no-store"
    mismatch = visitor.post(path, {"password": "a-Long-pass-2026", "password2": "other"})
    assert mismatch.status_code == 400 and b'id="password2-error"' in mismatch.content
    weak = visitor.post(path, {"password": "123", "password2": "123"})
    assert weak.status_code == 400 and b'id="password-error"' in weak.content
    done = visitor.post(path, {"password": "a-Long-pass-2026", "password2": "a-Long-pass-2026"})
    assert done.status_code == 302 and done["Location"] == SIGNIN
    user.refresh_from_db()
    assert user.check_password("a-Long-pass-2026")
    assert last_event().action == "user.set_password"
    # Dead once used.
    assert visitor.get(path).status_code == 404
    again = visitor.post(path, {"password": "b-Long-pass-2026", "password2": "b-Long-pass-2026"})
    assert again.status_code == 404
    user.refresh_from_db()
    assert user.check_password("a-Long-pass-2026")
    assert Client().login(username="newcomer", password="a-Long-pass-2026")


def test_set_password_link_expires_after_72_hours(setup, settings):
    # 72 hours whatever Django's own password-reset timeout says.
    settings.PASSWORD_RESET_TIMEOUT = 30 * 86400
    path = new_user_link(root_client(setup))
    real_now = SetPasswordTokens._now

    def later(hours):
        return mock.patch.object(
            SetPasswordTokens,
            "_now",
            lambda self: real_now(self) + dt.timedelta(hours=hours),
        )

    with later(71.9):
        assert Client().get(path).status_code == 200
    with later(72.1):
        assert Client().get(path).status_code == 404
        response = Client().post(
            path, {"password": "a-Long-pass-2026", "password2": "a-Long-pass-2026"}
        )
        assert response.status_code == 404
    assert not User.objects.get(username="newcomer").has_usable_password()


def test_a_wrong_link_does_not_work(setup):
    path = link_path(setup.bob)
    assert Client().get(path[:-3] + "xyz/").status_code == 404
    assert Client().get("/console/set-password/bm9ib2R5/abc-def/").status_code == 404


def test_deactivate_revokes_keys_and_kills_links(setup):
    key, _ = create_api_key(
        actor=SYSTEM, organization=setup.org_a, name="bob's", scopes=["inference"], user=setup.bob
    )
    path = link_path(setup.bob)
    response = root_client(setup).post(
        reverse("console:platform-user-deactivate", kwargs={"user_id": setup.bob.pk})
    )
    assert response.status_code == 302
    setup.bob.refresh_from_db()
    assert not setup.bob.is_active
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert AuditEvent.objects.filter(action="user.deactivate").exists()
    assert Client().get(path).status_code == 404


def test_the_last_platform_admin_cannot_be_deactivated(setup):
    before = state()
    response = root_client(setup).post(
        reverse("console:platform-user-deactivate", kwargs={"user_id": setup.root.pk})
    )
    assert response.status_code == 400
    assert b"at least one active administrator" in response.content
    assert state() == before


def test_user_create_errors(setup):
    before = state()
    response = root_client(setup).post(reverse("console:platform-user-create"), {"username": "bob"})
    assert response.status_code == 400 and b'id="user-name-error"' in response.content
    assert state() == before


# --------------------------------------------------------------------------- escaping
def test_stored_names_render_escaped(setup):
    evil = "<script>alert(1)</script>"
    Organization.objects.filter(slug="org-b").update(name=evil)
    User.objects.filter(pk=setup.bob.pk).update(email="x@example.org", first_name=evil)
    Model.objects.filter(pk=setup.model.pk).update(display_name=evil, description=evil)
    from controlplane.tenancy.services import create_team

    create_team(actor=SYSTEM, organization=setup.org_a, slug="evil", name=evil)
    client = root_client(setup)
    for name in ("platform-organizations", "platform-catalog", "platform-model", "platform-audit"):
        response = client.get(url_for(name, setup))
        assert response.status_code == 200
        assert b"<script>alert(1)" not in response.content, name
        for tag in re.findall(rb"<script[^>]*>", response.content):
            assert b"src=" in tag or b'type="application/json"' in tag, tag
        assert b" style=" not in response.content and b"<style" not in response.content
    body = client.get(url_for("platform-organizations", setup)).content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in body


# --------------------------------------------------------------------------- audit log
def test_audit_log_is_paginated_and_filtered(setup):
    client = root_client(setup)
    body = client.get(reverse("console:platform-audit"), {"action": "node."}).content.decode()
    assert "node.create" in body and "organization.create" not in body
    # Changes read as JSON ("null"), not as Python ("None").
    created = client.get(reverse("console:platform-audit"), {"action": "node.create"})
    assert "null" in created.content.decode() and "None" not in created.content.decode()
    total = AuditEvent.objects.count()
    assert (
        f"of {total}, newest first"
        in client.get(reverse("console:platform-audit")).content.decode()
    )


@pytest.fixture
def tamper():
    """Raw SQL with the append-only trigger switched off, as a DBA could."""

    def run(sql, params=()):
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
            cursor.execute(sql, params)
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")

    return run


def verify(client):
    started = client.post(reverse("console:platform-audit-verify"), HTTP_HX_REQUEST="true")
    assert started.status_code == 200
    return client.get(reverse("console:platform-audit-verify-result")).content.decode()


def test_verify_chain_runs_as_a_task_and_reports_ok(setup):
    client = root_client(setup)
    assert (
        "Not verified in this session yet"
        in client.get(reverse("console:platform-audit")).content.decode()
    )
    result = verify(client)
    assert "<strong>OK</strong>" in result
    assert f"all {AuditEvent.objects.count()} events hold" in result
    assert 'hx-trigger="every 2s"' not in result  # done: polling stops
    # Without htmx the POST sends the browser back to the page, which shows the result.
    assert client.post(reverse("console:platform-audit-verify")).status_code == 302
    assert "<strong>OK</strong>" in client.get(reverse("console:platform-audit")).content.decode()


def test_verify_chain_names_the_first_bad_seq(setup, tamper):
    tamper("UPDATE audit_auditevent SET target_repr = 'someone else' WHERE seq = 4")
    result = verify(root_client(setup))
    assert '<strong class="bad-seq">4</strong>' in result
    assert "event 4 was changed after it was written" in result


def test_verify_result_polls_while_the_task_runs(setup):
    from controlplane.console.platform import audit as platform_audit

    client = root_client(setup)
    with mock.patch.object(platform_audit.audit_tasks.verify_chain, "apply_async"):
        assert client.post(reverse("console:platform-audit-verify")).status_code == 302
    fragment = client.get(reverse("console:platform-audit-verify-result")).content.decode()
    assert "Verifying" in fragment and 'hx-trigger="every 2s"' in fragment


def test_verify_with_the_broker_down_is_a_message_not_a_500(setup):
    from controlplane.console.platform import audit as platform_audit

    client = root_client(setup)
    with mock.patch.object(
        platform_audit.audit_tasks.verify_chain, "apply_async", side_effect=OSError("no broker")
    ):
        response = client.post(reverse("console:platform-audit-verify"))
        assert response.status_code == 503 and b"unavailable" in response.content
        assert b"<h1>" in response.content  # the whole page, not a fragment
        fragment = client.post(reverse("console:platform-audit-verify"), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and b"unavailable" in fragment.content


def test_lists_run_a_bounded_number_of_queries(setup, make_user, django_assert_max_num_queries):
    from controlplane.tenancy.services import add_member

    for n in range(60):
        make_user(f"user-{n}")
        add_member(actor=SYSTEM, organization=setup.org_b, username=f"user-{n}", role="member")
    pool = Node.objects.get(name="gpu-1").pool
    for n in range(10):
        node = create_node(actor=SYSTEM, name=f"gpu-x{n}", pool=pool, address=f"10.0.1.{n}")
        Node.objects.filter(pk=node.pk).update(
            inventory={"gpus": [{"index": i, "memory_total_mib": 81920} for i in range(8)]}
        )
    client = root_client(setup)
    for name in ("platform-users", "platform-fleet", "platform-audit", "platform-organizations"):
        with django_assert_max_num_queries(15):
            response = client.get(url_for(name, setup))
        assert response.status_code == 200, name
    body = client.get(reverse("console:platform-users"), {"page": 2}).content.decode()
    assert "Page 2 of 2" in body


def test_the_verify_task_is_registered():
    from controlplane.audit.tasks import verify_chain
    from controlplane.celery import app

    assert "audit.verify_chain" in app.tasks and verify_chain.name == "audit.verify_chain"


def test_a_model_named_like_a_route_still_has_its_page(setup):
    client = root_client(setup)
    assert client.post(reverse("console:platform-model-create"), {**MODEL_FORM, "alias": "new"})[
        "Location"
    ] == reverse("console:platform-model", kwargs={"alias": "new"})
    assert client.get(reverse("console:platform-model", kwargs={"alias": "new"})).status_code == 200


def test_only_platform_admins_see_the_platform_link(setup):
    overview = reverse("console:overview", kwargs={"org_slug": "org-a"})
    client = Client()
    client.force_login(setup.alice)
    assert b'href="/console/platform/"' not in client.get(overview).content
    assert b'href="/console/platform/"' in root_client(setup).get(overview).content
