"""Console pages: Platform administrator pages under /console/platform/.

Only platform administrators (``user.is_superuser``) see these pages; anyone else
signed in gets a 404, so the pages do not reveal that they exist. Writes go through
the services with ``Actor.for_user`` like every console page; a service's
``ValidationError`` comes back on the form (400), never as a 500.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import (
    password_validators_help_texts,
    validate_password,
)
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Prefetch, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.encoding import force_bytes, force_str
from django.utils.http import base36_to_int, urlsafe_base64_decode, urlsafe_base64_encode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.audit import tasks as audit_tasks
from controlplane.audit.models import AuditEvent
from controlplane.audit.services import record_event
from controlplane.catalog import services as catalog_services
from controlplane.catalog.models import (
    Dtype,
    Model,
    ModelVersion,
    Openness,
    Quantization,
    SourceType,
    Task,
)
from controlplane.console.views import signed_in
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import ArtifactFetch, Node, Pool, Replica, ReplicaState
from controlplane.tenancy import services as tenancy_services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Membership, Organization
from controlplane.tenancy.permissions import require

log = logging.getLogger(__name__)
User = get_user_model()
PER_PAGE = 50
PREFIX = "platform/"


def platform_page(view):
    """A page for platform administrators only: anyone else signed in gets a 404."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_superuser:
            raise Http404("No such page.")
        request.actor = Actor.for_user(request.user)
        return view(request, *args, **kwargs)

    page = signed_in(wrapper)
    page.console_action = "platform"  # read by the role-table test
    return page


def _context(request, section: str, **extra) -> dict:
    # The organization switcher of base.html: a platform administrator may open any.
    switcher = Organization.objects.order_by("slug")[:200]
    return {"section": section, "organizations": switcher, **extra}


def _errors(exc: ValidationError) -> dict[str, str]:
    """A service's ValidationError as {field or "form": message}."""
    return {
        ("form" if field == "__all__" else field): " ".join(str(m) for m in messages)
        for field, messages in getattr(exc, "message_dict", {"__all__": exc.messages}).items()
    }


def _no_store(response):
    # One-time links and set-password forms: never cached.
    response["Cache-Control"] = "no-store"
    return response


def _uuid(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# --------------------------------------------------------------------------- one-time links
SET_PASSWORD_LINK_HOURS = 72


class SetPasswordTokens(PasswordResetTokenGenerator):
    """Tokens of the one-time set-password links. Such a token dies when the password
    changes (its hash is part of the token), when the user is switched off, and after
    72 hours whatever ``PASSWORD_RESET_TIMEOUT`` says."""

    key_salt = "controlplane.console.platform.SetPasswordTokens"
    max_age_seconds = SET_PASSWORD_LINK_HOURS * 3600

    def _make_hash_value(self, user, timestamp):
        return f"{super()._make_hash_value(user, timestamp)}{user.is_active}"

    def check_token(self, user, token):
        if not super().check_token(user, token):
            return False
        try:
            issued = base36_to_int(token.split("-")[0])
        except ValueError:
            return False
        return self._num_seconds(self._now()) - issued <= self.max_age_seconds


set_password_tokens = SetPasswordTokens()


def set_password_link(request, user) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = set_password_tokens.make_token(user)
    return request.build_absolute_uri(
        reverse("console:set-password", kwargs={"uidb64": uid, "token": token})
    )


@transaction.atomic
def issue_set_password_link(request, *, actor: Actor, user) -> str:
    """A new link for ``user`` (audited: who handed out a way into which account)."""
    require(actor, "user.change")
    if not user.is_active:
        raise ValidationError({"form": f"{user.get_username()} is deactivated."})
    record_event(
        actor=actor,
        action="user.set_password_link",
        target=user,
        target_type="user",
        target_repr=user.get_username(),
        changes={"valid_hours": [None, SET_PASSWORD_LINK_HOURS]},
    )
    return set_password_link(request, user)


def _link_page(request, user, link, **extra):
    return _no_store(
        render(
            request,
            "console/platform/link.html",
            _context(request, "users", link_user=user, link=link, **extra),
        )
    )


def _user_from_uid(uidb64):
    try:
        pk = force_str(urlsafe_base64_decode(uidb64))
        return User.objects.get(pk=pk)
    except (ValueError, TypeError, OverflowError, User.DoesNotExist):
        return None


@require_http_methods(["GET", "POST"])
def set_password(request, uidb64, token):
    """Public: the holder of a valid link chooses a password; the link then dies."""
    user = _user_from_uid(uidb64)
    valid = user is not None and user.is_active and set_password_tokens.check_token(user, token)
    if not valid:
        response = render(request, "console/platform/set_password.html", {"valid": False})
        response.status_code = 404
        return _no_store(response)
    errors: dict[str, str] = {}
    if request.method == "POST":
        password = request.POST.get("password", "")
        if password != request.POST.get("password2", ""):
            errors["password2"] = "The two passwords differ."
        else:
            try:
                validate_password(password, user)
            except ValidationError as exc:
                errors["password"] = " ".join(exc.messages)
        if not errors:
            tenancy_services.set_user_password(
                actor=Actor.system(f"set-password link of {user.get_username()}"),
                user=user,
                password=password,
            )
            return redirect("console:signin")
    response = render(
        request,
        "console/platform/set_password.html",
        {
            "valid": True,
            "link_user": user,
            "errors": errors,
            "help_texts": password_validators_help_texts(),
        },
        status=400 if errors else 200,
    )
    return _no_store(response)


# --------------------------------------------------------------------------- index
@require_GET
@platform_page
def index(request):
    counts = {
        "organizations": Organization.objects.count(),
        "models": Model.objects.count(),
        "nodes": Node.objects.count(),
        "users": User.objects.filter(is_active=True).count(),
        "audit_events": AuditEvent.objects.count(),
    }
    return render(request, "console/platform/index.html", _context(request, "index", counts=counts))


# --------------------------------------------------------------------------- organizations
def _organizations_page(request, status=200, **extra):
    organizations = Organization.objects.annotate(members=Count("memberships")).order_by("slug")
    page = Paginator(organizations, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/platform/organizations.html",
        _context(request, "organizations", page=page, **extra),
        status=status,
    )


@require_GET
@platform_page
def organizations(request):
    return _organizations_page(request)


@require_POST
@platform_page
def organization_create(request):
    """Create an organization with its owner: an existing user, or a new account
    that gets a one-time set-password link (shown once)."""
    actor = request.actor
    form = request.POST
    slug, name = form.get("slug", "").strip(), form.get("name", "").strip()
    owner_name = form.get("owner", "").strip()
    new_owner = form.get("new_owner") == "on"
    errors: dict[str, str] = {}
    if not slug:
        errors["slug"] = "Give the organization a slug."
    if not name:
        errors["name"] = "Give the organization a name."
    if not owner_name:
        errors["owner"] = "Name the owner."
    owner = User.objects.filter(username=owner_name).first() if owner_name else None
    if owner_name and not new_owner and owner is None:
        errors["owner"] = f"No user named {owner_name!r}; tick “create this user” to add one."
    if owner is not None and not owner.is_active:
        errors["owner"] = f"{owner_name} is deactivated."
    if not errors:
        try:
            with transaction.atomic():
                if owner is None:
                    owner = tenancy_services.create_user(
                        actor=actor, username=owner_name, email=form.get("email", "").strip()
                    )
                    link = issue_set_password_link(request, actor=actor, user=owner)
                else:
                    link = None
                organization = tenancy_services.create_organization(
                    actor=actor, slug=slug, name=name, owner=owner
                )
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            if link:
                return _link_page(request, owner, link, created=organization)
            return redirect("console:platform-organizations")
    return _organizations_page(request, status=400, errors=errors, form=form)


@require_POST
@platform_page
def organization_delete(request, slug):
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise Http404("No such organization.")
    tenancy_services.delete_organization(actor=request.actor, organization=organization)
    return redirect("console:platform-organizations")


# --------------------------------------------------------------------------- catalog
MODEL_TEXT_FIELDS = ("display_name", "description", "publisher", "license_id", "license_name")


def _model_fields(form, *, creating: bool) -> dict:
    fields = {name: form.get(name, "").strip() for name in MODEL_TEXT_FIELDS}
    fields.update(
        task=form.get("task", ""),
        openness=form.get("openness", ""),
        license_url=form.get("license_url", "").strip(),
        commercial_use=form.get("commercial_use") == "on",
    )
    if creating:
        fields["alias"] = form.get("alias", "").strip()
    return fields


def _choices() -> dict:
    return {
        "tasks": Task.choices,
        "opennesses": Openness.choices,
        "source_types": SourceType.choices,
        "dtypes": Dtype.choices,
        "quantizations": Quantization.choices,
    }


def _catalog_page(request, status=200, **extra):
    models = Model.objects.annotate(version_count=Count("versions")).order_by("alias")
    page = Paginator(models, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/platform/catalog.html",
        _context(request, "catalog", page=page, **_choices(), **extra),
        status=status,
    )


@require_GET
@platform_page
def catalog(request):
    return _catalog_page(request)


@require_POST
@platform_page
def model_create(request):
    try:
        model = catalog_services.create_model(
            actor=request.actor, **_model_fields(request.POST, creating=True)
        )
    except ValidationError as exc:
        return _catalog_page(request, status=400, errors=_errors(exc), form=request.POST)
    return redirect("console:platform-model", alias=model.alias)


def _model_or_404(alias) -> Model:
    model = Model.objects.filter(alias=alias).first()
    if model is None:
        raise Http404("No such model.")
    return model


def _fetch_view(fetch: ArtifactFetch) -> dict:
    percent = round(100 * fetch.bytes_done / fetch.bytes_total) if fetch.bytes_total else None
    return {"fetch": fetch, "percent": percent}


def _model_page(request, model, status=200, part=None, **extra):
    versions = list(
        model.versions.select_related("trust_remote_code_approved_by").order_by("-created_at")
    )
    fetches: dict = {}
    for fetch in ArtifactFetch.objects.filter(model_version__model=model).select_related("node"):
        fetches.setdefault(fetch.model_version_id, [])
        if len(fetches[fetch.model_version_id]) < 5:
            fetches[fetch.model_version_id].append(_fetch_view(fetch))
    rows = [
        {
            "version": v,
            "fetches": fetches.get(v.pk, []),
            "manifest_files": len(v.file_manifest or {}),
            "engine_args_json": json.dumps(v.engine_args) if v.engine_args else "",
            "remote_code_approved": fleet_services.trust_remote_code(v),
        }
        for v in versions
    ]
    fetching = any(f["fetch"].state in ("queued", "running") for r in rows for f in r["fetches"])
    template = "console/platform/model.html"
    if part == "versions":  # htmx refreshing fetch progress
        template = "console/platform/_versions.html"
    return render(
        request,
        template,
        _context(
            request,
            "catalog",
            model=model,
            rows=rows,
            fetching=fetching,
            upstreams=model.upstreams.order_by("name"),
            nodes=Node.objects.order_by("name"),
            **_choices(),
            **extra,
        ),
        status=status,
    )


@require_GET
@platform_page
def model_detail(request, alias):
    return _model_page(request, _model_or_404(alias), part=request.GET.get("part"))


@require_POST
@platform_page
def model_edit(request, alias):
    model = _model_or_404(alias)
    try:
        catalog_services.update_model(
            actor=request.actor, model=model, **_model_fields(request.POST, creating=False)
        )
    except ValidationError as exc:
        model.refresh_from_db()
        return _model_page(request, model, status=400, errors={"model": _errors(exc)})
    return redirect("console:platform-model", alias=model.alias)


def _int_or_none(value, field: str):
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationError({field: "Give a whole number."}) from None


def _version_fields(form) -> dict:
    fields = {
        name: form.get(name, "").strip()
        for name in (
            "version",
            "source_type",
            "hf_repo",
            "revision",
            "local_path",
            "external_url",
            "dtype",
            "quantization",
        )
    }
    fields["parameter_count"] = _int_or_none(form.get("parameter_count"), "parameter_count")
    fields["context_length"] = _int_or_none(form.get("context_length"), "context_length")
    fields["is_default"] = form.get("is_default") == "on"
    engine_args = form.get("engine_args", "").strip()
    try:
        fields["engine_args"] = json.loads(engine_args) if engine_args else {}
    except ValueError:
        message = 'Give a JSON object, e.g. {"max_num_seqs": 8}.'
        raise ValidationError({"engine_args": message}) from None
    return fields


def _version_or_404(model, version_id) -> ModelVersion:
    version = model.versions.filter(pk=_uuid(version_id)).first()
    if version is None:
        raise Http404("No such version.")
    return version


@require_POST
@platform_page
def version_create(request, alias):
    model = _model_or_404(alias)
    try:
        catalog_services.create_version(
            actor=request.actor, model=model, **_version_fields(request.POST)
        )
    except ValidationError as exc:
        return _model_page(
            request, model, status=400, errors={"new_version": _errors(exc)}, form=request.POST
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_edit(request, alias, version_id):
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    try:
        fields = _version_fields(request.POST)
        # A version's name is its folder in the model cache: it does not change.
        fields.pop("version", None)
        catalog_services.update_version(actor=request.actor, version=version, **fields)
    except ValidationError as exc:
        return _model_page(
            request, model, status=400, errors={str(version.pk): _errors(exc)}, form=request.POST
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_remote_code(request, alias, version_id):
    """Approve (or withdraw) running the repository's own code for one version:
    ``trust_remote_code`` with the approving administrator recorded."""
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    approve = request.POST.get("approve") == "1"
    try:
        catalog_services.update_version(
            actor=request.actor, version=version, trust_remote_code=approve
        )
    except ValidationError as exc:
        return _model_page(request, model, status=400, errors={str(version.pk): _errors(exc)})
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def version_fetch(request, alias, version_id):
    model = _model_or_404(alias)
    version = _version_or_404(model, version_id)
    node = None
    if request.POST.get("node"):
        node = Node.objects.filter(pk=_uuid(request.POST["node"])).first()
        if node is None:
            return _model_page(
                request, model, status=400, errors={str(version.pk): {"node": "No such node."}}
            )
    try:
        fleet_services.start_fetch(actor=request.actor, version=version, node=node)
    except ValidationError as exc:
        return _model_page(request, model, status=400, errors={str(version.pk): _errors(exc)})
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def upstream_create(request, alias):
    model = _model_or_404(alias)
    form = request.POST
    try:
        catalog_services.create_upstream(
            actor=request.actor,
            model=model,
            name=form.get("name", "").strip(),
            base_url=form.get("base_url", "").strip(),
            served_model_name=form.get("served_model_name", "").strip(),
            api_key=form.get("api_key", ""),
        )
    except ValidationError as exc:
        # The key the administrator typed is not sent back, even on an error.
        kept = {k: v for k, v in form.items() if k != "api_key"}
        return _model_page(
            request, model, status=400, errors={"new_upstream": _errors(exc)}, form=kept
        )
    return redirect("console:platform-model", alias=model.alias)


@require_POST
@platform_page
def upstream_edit(request, alias, upstream_id):
    model = _model_or_404(alias)
    upstream = model.upstreams.filter(pk=_uuid(upstream_id)).first()
    if upstream is None:
        raise Http404("No such upstream.")
    form = request.POST
    # Write-only key: blank keeps the stored one, "clear" removes it.
    api_key = form.get("api_key") or None
    if form.get("clear_api_key") == "on":
        api_key = ""
    try:
        catalog_services.update_upstream(
            actor=request.actor,
            upstream=upstream,
            api_key=api_key,
            base_url=form.get("base_url", "").strip(),
            served_model_name=form.get("served_model_name", "").strip(),
            enabled=form.get("enabled") == "on",
        )
    except ValidationError as exc:
        upstream.refresh_from_db()
        return _model_page(request, model, status=400, errors={str(upstream.pk): _errors(exc)})
    return redirect("console:platform-model", alias=model.alias)


# --------------------------------------------------------------------------- fleet
def _age(moment, now) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _gpus(node: Node, replicas: list[Replica]) -> list[dict]:
    """Each GPU of the node: total from its inventory, reserved by each deployment
    whose replicas hold it, and what is left."""
    rows = []
    for gpu in sorted((node.inventory or {}).get("gpus", []), key=lambda g: g.get("index", 0)):
        index = int(gpu.get("index", 0))
        total = int(gpu.get("memory_total_mib") or 0)
        holders = [
            {
                "deployment": (
                    f"{r.deployment.organization.slug}/{r.deployment.name}"
                    if r.deployment.organization_id
                    else f"platform/{r.deployment.name}"
                ),
                "mib": r.memory_mib,
            }
            for r in replicas
            if index in (r.gpu_indices or [])
        ]
        reserved = sum(h["mib"] for h in holders)
        rows.append(
            {
                "index": index,
                "name": gpu.get("name", ""),
                "total": total,
                "reserved": reserved,
                "free": max(0, total - reserved),
                "high": total * 9 // 10,
                "holders": holders,
                "over": reserved > total,
            }
        )
    return rows


def _fleet_page(request, status=200, **extra):
    now = timezone.now()
    pools = Pool.objects.annotate(node_count=Count("nodes")).order_by("name")
    nodes = list(Node.objects.select_related("pool").order_by("pool__name", "name"))
    replicas: dict = {}
    for replica in (
        Replica.objects.filter(node__in=nodes)
        .exclude(state=ReplicaState.STOPPED)
        .select_related("deployment__organization")
    ):
        replicas.setdefault(replica.node_id, []).append(replica)
    rows = [
        {
            "node": node,
            "heartbeat_age": _age(node.last_heartbeat, now),
            "gpus": _gpus(node, replicas.get(node.pk, [])),
            "replica_count": len(replicas.get(node.pk, [])),
        }
        for node in nodes
    ]
    return render(
        request,
        "console/platform/fleet.html",
        _context(request, "fleet", pools=pools, rows=rows, **extra),
        status=status,
    )


@require_GET
@platform_page
def fleet(request):
    return _fleet_page(request)


@require_POST
@platform_page
def node_cordon(request, name):
    node = Node.objects.filter(name=name).first()
    if node is None:
        raise Http404("No such node.")
    fleet_services.set_cordoned(
        actor=request.actor, node=node, cordoned=request.POST.get("cordoned") == "1"
    )
    return redirect("console:platform-fleet")


# --------------------------------------------------------------------------- users
def _users_page(request, status=200, **extra):
    users = User.objects.order_by("username").prefetch_related(
        Prefetch("memberships", queryset=Membership.objects.select_related("organization"))
    )
    search = request.GET.get("q", "").strip()[:100]
    if search:
        users = users.filter(Q(username__icontains=search) | Q(email__icontains=search))
    page = Paginator(users, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/platform/users.html",
        _context(request, "users", page=page, search=search, **extra),
        status=status,
    )


@require_GET
@platform_page
def users(request):
    return _users_page(request)


@require_POST
@platform_page
def user_create(request):
    form = request.POST
    try:
        with transaction.atomic():
            user = tenancy_services.create_user(
                actor=request.actor,
                username=form.get("username", "").strip(),
                email=form.get("email", "").strip(),
            )
            link = issue_set_password_link(request, actor=request.actor, user=user)
    except ValidationError as exc:
        return _users_page(request, status=400, errors=_errors(exc), form=form)
    return _link_page(request, user, link)


def _user_or_404(user_id):
    user = User.objects.filter(pk=_int_or_404(user_id)).first()
    if user is None:
        raise Http404("No such user.")
    return user


def _int_or_404(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Http404("No such user.") from None


@require_POST
@platform_page
def user_link(request, user_id):
    user = _user_or_404(user_id)
    try:
        link = issue_set_password_link(request, actor=request.actor, user=user)
    except ValidationError as exc:
        return _users_page(request, status=400, errors=_errors(exc))
    return _link_page(request, user, link)


@require_POST
@platform_page
def user_deactivate(request, user_id):
    user = _user_or_404(user_id)
    try:
        tenancy_services.deactivate_user(actor=request.actor, user=user)
    except ValidationError as exc:
        return _users_page(request, status=400, errors=_errors(exc))
    return redirect("console:platform-users")


# --------------------------------------------------------------------------- audit log
VERIFY_SESSION_KEY = "console:audit-verify-run"


def _verify_state(request) -> dict:
    run_id = request.session.get(VERIFY_SESSION_KEY)
    if not run_id:
        return {"state": "none"}
    try:
        result = audit_tasks.verify_result(run_id)
    except redis.RedisError as exc:
        log.warning("audit verification result unavailable: %s", exc)
        return {"state": "unavailable", "run_id": run_id}
    if result is None:
        return {"state": "running", "run_id": run_id}
    return {"state": "done", "run_id": run_id, "result": result}


def _audit_page(request, verify: dict, status: int = 200):
    events = AuditEvent.objects.order_by("-seq")
    prefix = request.GET.get("action", "").strip()[:64]
    if prefix:
        events = events.filter(action__startswith=prefix)
    page = Paginator(events, PER_PAGE).get_page(request.GET.get("page"))
    org_ids = {e.organization_id for e in page if e.organization_id}
    slugs = {
        str(pk): slug
        for pk, slug in Organization.objects.filter(pk__in=org_ids).values_list("pk", "slug")
    }
    return render(
        request,
        "console/platform/audit.html",
        _context(request, "audit", page=page, prefix=prefix, slugs=slugs, verify=verify),
        status=status,
    )


@require_GET
@platform_page
def audit(request):
    return _audit_page(request, _verify_state(request))


@require_POST
@platform_page
def audit_verify(request):
    """Start a verification of the whole chain on a worker; the page then polls."""
    run_id = str(uuid.uuid4())
    try:
        audit_tasks.verify_chain.apply_async(args=[run_id], task_id=run_id, queue="default")
    except Exception as exc:  # the broker being down is a message, not a 500
        log.warning("could not start the audit verification: %s", exc)
        request.session.pop(VERIFY_SESSION_KEY, None)
        unavailable = {"state": "unavailable"}
        if request.headers.get("HX-Request") == "true":
            # htmx swaps only successful responses: the message must come as a 200.
            return render(request, "console/platform/_verify.html", {"verify": unavailable})
        return _audit_page(request, unavailable, status=503)
    request.session[VERIFY_SESSION_KEY] = run_id
    if request.headers.get("HX-Request") == "true":
        return render(request, "console/platform/_verify.html", {"verify": _verify_state(request)})
    return redirect("console:platform-audit")


@require_GET
@platform_page
def audit_verify_result(request):
    return render(request, "console/platform/_verify.html", {"verify": _verify_state(request)})


urlpatterns = [
    path(PREFIX, index, name="platform"),
    path(PREFIX + "organizations/", organizations, name="platform-organizations"),
    path(PREFIX + "organizations/new/", organization_create, name="platform-organization-create"),
    path(
        PREFIX + "organizations/<str:slug>/delete/",
        organization_delete,
        name="platform-organization-delete",
    ),
    path(PREFIX + "catalog/", catalog, name="platform-catalog"),
    path(PREFIX + "catalog/new/", model_create, name="platform-model-create"),
    path(PREFIX + "catalog/models/<str:alias>/", model_detail, name="platform-model"),
    path(PREFIX + "catalog/models/<str:alias>/edit/", model_edit, name="platform-model-edit"),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/new/",
        version_create,
        name="platform-version-create",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/edit/",
        version_edit,
        name="platform-version-edit",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/remote-code/",
        version_remote_code,
        name="platform-version-remote-code",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/versions/<str:version_id>/fetch/",
        version_fetch,
        name="platform-version-fetch",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/upstreams/new/",
        upstream_create,
        name="platform-upstream-create",
    ),
    path(
        PREFIX + "catalog/models/<str:alias>/upstreams/<str:upstream_id>/edit/",
        upstream_edit,
        name="platform-upstream-edit",
    ),
    path(PREFIX + "fleet/", fleet, name="platform-fleet"),
    path(PREFIX + "fleet/nodes/<str:name>/cordon/", node_cordon, name="platform-node-cordon"),
    path(PREFIX + "users/", users, name="platform-users"),
    path(PREFIX + "users/new/", user_create, name="platform-user-create"),
    path(PREFIX + "users/<str:user_id>/link/", user_link, name="platform-user-link"),
    path(
        PREFIX + "users/<str:user_id>/deactivate/", user_deactivate, name="platform-user-deactivate"
    ),
    path(PREFIX + "audit/", audit, name="platform-audit"),
    path(PREFIX + "audit/verify/", audit_verify, name="platform-audit-verify"),
    path(PREFIX + "audit/verify/result/", audit_verify_result, name="platform-audit-verify-result"),
    path("set-password/<str:uidb64>/<str:token>/", set_password, name="set-password"),
]
