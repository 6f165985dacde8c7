"""Console pages. Reads go through ``Model.objects.restrict(actor, action)`` and writes
through the services with ``Actor.for_user``, so the console obeys the API's rules:
an organization the caller cannot see is a 404, a role too short for a page a 403."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import logging
import uuid

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from controlplane.catalog.models import OrganizationModelAccess
from controlplane.catalog.services import usable_model_aliases
from controlplane.console import charts, playground
from controlplane.console.streaming import streamed
from controlplane.fleet.models import Deployment
from controlplane.quotas import summary
from controlplane.quotas.api.serializers import UsageSummaryQuerySerializer
from controlplane.quotas.rollup import day_of, now_hour
from controlplane.redis import get_redis
from controlplane.tenancy import services as tenancy_services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import ApiKey, Membership, Organization, Team
from gateway.contract import SCOPES

KEYS_PER_PAGE = 50
#: Most keys or teams the usage page lists (the ones with the most tokens; CSV: all).
USAGE_ROWS_SHOWN = 100
#: The URL prefix of an organization's pages (``org_slug`` for ``org_page``).
ORG = "o/<str:org_slug>/"
log = logging.getLogger(__name__)


def root(request):
    return redirect("console:home")


SIGNIN_FAILURES_ALLOWED = 5
SIGNIN_WINDOW_SECONDS = 15 * 60


def _signin_failures_key(request) -> str:
    username = request.POST.get("username", "")[:150].lower()
    who = f"{username}\n{request.META.get('REMOTE_ADDR', '')}"
    return "console:signin-failures:" + hashlib.sha256(who.encode()).hexdigest()


class SignInView(auth_views.LoginView):
    """Sign-in, throttled: after 5 failures for one user name from one address within
    15 minutes, further attempts are refused (429) until the window passes."""

    template_name = "console/signin.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return reverse("console:home")

    def post(self, request, *args, **kwargs):
        try:
            failures = int(get_redis().get(_signin_failures_key(request)) or 0)
        except redis.RedisError as exc:
            # Without Redis no attempt is counted; sign-in itself must keep working.
            log.warning("sign-in throttle unavailable: %s", exc)
            failures = 0
        if failures >= SIGNIN_FAILURES_ALLOWED:
            form = self.get_form()
            form.errors.clear()
            form.add_error(None, "Too many failed attempts; try again in 15 minutes.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = _signin_failures_key(self.request)
        try:
            pipe = get_redis().pipeline()
            pipe.incr(key)
            pipe.expire(key, SIGNIN_WINDOW_SECONDS, nx=True)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("sign-in throttle unavailable: %s", exc)
        return super().form_invalid(form)


class SignOutView(auth_views.LogoutView):
    """POST only (Django's LogoutView refuses GET). Revokes the session's playground
    keys first: they must not outlive the session that holds their secrets."""

    next_page = "console:signin"

    def post(self, request, *args, **kwargs):
        playground.revoke_session_keys(request)
        return super().post(request, *args, **kwargs)


def _actor(request) -> Actor:
    return Actor.for_user(request.user)


def _organizations(actor: Actor):
    return Organization.objects.restrict(actor, "organization.view").order_by("slug")


def signed_in(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated or not request.user.is_active:
            return redirect(f"{reverse('console:signin')}?next={request.path}")
        return view(request, *args, **kwargs)

    return wrapper


def org_page(action: str):
    """A page of one organization that needs ``action`` (``tenancy/roles.py``)."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request, org_slug, *args, **kwargs):
            actor = _actor(request)
            organization = _organizations(actor).filter(slug=org_slug).first()
            if organization is None:
                raise Http404("No such organization.")
            if not actor.can(action, organization.pk):
                raise PermissionDenied(f"Your role in {organization.slug} does not allow this.")
            request.actor = actor
            request.organization = organization
            return view(request, *args, **kwargs)

        page = signed_in(wrapper)
        page.console_action = action  # read by the role-table test
        return page

    return decorate


TEMPLATE_ACTIONS = (
    "organization.change",
    "organization.delete",
    "team.change",
    "member.view",
    "member.change",
    "apikey.create",
    "apikey.manage",
    "model_access.change",
    "policy.change",
    "limits.view",
    "limits.change",
    "usage.view",
    "audit.view",
    "deployment.change",
)


def _context(request, **extra) -> dict:
    actor = request.actor
    organization = request.organization
    # ``can.<action with _ for .>`` in templates: pages show write controls only to
    # callers whose role allows them (the views check again on POST).
    can = {name.replace(".", "_"): actor.can(name, organization.pk) for name in TEMPLATE_ACTIONS}
    return {
        "organization": organization,
        "organizations": _organizations(actor),
        "can": can,
        **extra,
    }


@require_GET
@signed_in
def home(request):
    organizations = list(_organizations(_actor(request)))
    if len(organizations) == 1 and not request.user.is_superuser:
        return redirect("console:overview", org_slug=organizations[0].slug)
    return render(request, "console/home.html", {"organizations": organizations})


def _chart(rows: list[dict]) -> dict:
    """uPlot's columnar data: x in epoch seconds, then one series per figure."""
    return {
        "x": [int(dt.datetime.fromisoformat(r["group"]).timestamp()) for r in rows],
        "requests": [r["requests"] for r in rows],
        "tokens": [r["total_tokens"] for r in rows],
        "errors": [r["errors_4xx"] + r["errors_5xx"] for r in rows],
    }


@require_GET
@org_page("organization.view")
def overview(request):
    organization, actor = request.organization, request.actor
    deployments = (
        Deployment.objects.restrict(actor, "deployment.view")
        .filter(organization=organization)
        .select_related("model_version__model")
        .order_by("name")[:100]
    )
    models = (
        OrganizationModelAccess.objects.restrict(actor, "model_access.view")
        .filter(organization=organization)
        .select_related("model")[:200]
    )
    extra = {"deployments": deployments, "models": models}
    if actor.can("usage.view", organization.pk):
        days = 30 if request.GET.get("days") == "30" else 7
        now = summary_now()
        since, until = whole_days(days)
        rows = summary.organization_rows(actor, organization)
        by_day = summary.summarize(rows, group_by="day", since=since, until=until)
        top = {
            group: summary.summarize(
                rows, group_by=group, since=since, until=until, with_totals=False, top=10
            )["results"]
            for group in ("model", "team", "key")
        }
        extra.update(days=days, by_day=by_day, chart=_chart(by_day["results"]), top=top)
        extra["names"] = _names(organization, [r["group"] for r in top["key"] if r["group"]])
        extra.update(
            _overview_charts(
                actor, organization, rows, since=since, until=until, now=now, names=extra["names"]
            )
        )
    return render(request, "console/overview.html", _context(request, **extra))


def _overview_charts(actor, organization, rows, *, since, until, now, names) -> dict:
    """Per-model daily charts, hourly latency and monthly budgets (``charts.py``)."""
    by_model = charts.daily_by_model(rows, since=since, until=until)
    latency, latency_chart = charts.hourly_latency(rows, until=now)
    return {
        "by_model": by_model,
        "by_model_tables": {
            metric: charts.series_table(by_model[metric], by_model["days"])
            for metric in charts.METRICS
        },
        "latency": latency,
        "latency_chart": latency_chart,
        "budgets": charts.monthly_budgets(actor, organization, rows, until=until, names=names),
    }


def summary_now() -> dt.datetime:
    """The end of the current hour: summaries cover whole hours."""
    return now_hour() + dt.timedelta(hours=1)


def whole_days(days: int) -> tuple[dt.datetime, dt.datetime]:
    """``(since, until)`` of the last ``days`` whole UTC days, today's included: the
    daily rollups answer such a range alone."""
    until = day_of(now_hour()) + dt.timedelta(days=1)
    return until - dt.timedelta(days=days), until


def _names(organization, key_ids=None) -> dict[str, str]:
    """Display names of teams and keys, by id as the summary reports them; of the keys
    in ``key_ids`` only when given (a page names the keys it shows, not all 5,000)."""
    names = {
        str(pk): name
        for pk, name in Team.objects.filter(organization=organization).values_list("pk", "name")
    }
    keys = ApiKey.objects.filter(organization=organization)
    if key_ids is not None:
        keys = keys.filter(pk__in=[k for k in map(as_uuid, key_ids) if k])
    names.update(
        (str(pk), f"{name} ({prefix})")
        for pk, name, prefix in keys.values_list("pk", "name", "prefix")[:5000]
    )
    return names


@require_GET
@org_page("usage.view")
def usage(request):
    organization, actor = request.organization, request.actor
    query = UsageSummaryQuerySerializer(data=request.GET)
    if not query.is_valid():
        return render(
            request,
            "console/usage.html",
            _context(
                request, errors=query.errors, params=request.GET, groups=sorted(summary.GROUPS)
            ),
            status=400,
        )
    wanted = dict(query.validated_data)
    if not request.GET.get("since") and not request.GET.get("until"):
        wanted["since"], wanted["until"] = whole_days(7)
    rows = summary.organization_rows(actor, organization)
    if request.GET.get("format") == "csv":
        return _csv(request, organization, summary.summarize(rows, **wanted))
    if wanted["group_by"] in ("key", "team"):
        # Thousands of keys make a page nobody reads (and seconds to render): the
        # biggest ones here, most first, all of them in the CSV.
        report = summary.summarize(rows, **wanted, top=USAGE_ROWS_SHOWN)
    else:
        report = summary.summarize(rows, **wanted)
    chart = _chart(report["results"]) if report["group_by"] in ("day", "hour") else None
    shown = report["results"]
    return render(
        request,
        "console/usage.html",
        _context(
            request,
            report=report,
            shown=shown,
            group_count=report.get("groups", len(shown)),
            chart=chart,
            params=request.GET,
            names=_names(
                organization,
                [r["group"] for r in shown if r["group"]] if report["group_by"] == "key" else (),
            ),
            groups=sorted(summary.GROUPS),
        ),
    )


CSV_COLUMNS = (
    "group",
    "requests",
    "errors_4xx",
    "errors_5xx",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms_avg",
    "latency_ms_p50",
    "latency_ms_p95",
    "ttft_ms_avg",
    "ttft_ms_p50",
    "ttft_ms_p95",
)


class _Echo:
    def write(self, value):
        return value


def _csv_cell(value):
    # A cell starting with = + - @ would be a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _csv(request, organization, report) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(CSV_COLUMNS)
        for row in report["results"]:
            yield writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])

    response = streamed(request, rows(), content_type="text/csv; charset=utf-8")
    filename = f"usage-{organization.slug}-{report['group_by']}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


KEY_STATES = ("active", "revoked", "expired", "expiring")


def _keys(request):
    organization, actor = request.organization, request.actor
    keys = (
        ApiKey.objects.restrict(actor, "apikey.view")
        .filter(organization=organization)
        .select_related("team", "user")
        .order_by("-created_at", "pk")
    )
    search = request.GET.get("q", "").strip()[:100]
    if search:
        keys = keys.filter(
            Q(name__icontains=search)
            | Q(prefix__istartswith=search)
            | Q(team__name__icontains=search)
        )
    now = timezone.now()
    state = request.GET.get("state", "")
    if state == "active":
        keys = keys.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))
    elif state == "revoked":
        keys = keys.exclude(revoked_at=None)
    elif state == "expired":
        keys = keys.filter(revoked_at=None, expires_at__lte=now)
    elif state == "expiring":
        keys = keys.filter(
            revoked_at=None, expires_at__gt=now, expires_at__lte=now + dt.timedelta(days=7)
        )
    return keys, search, state


def _key_form_context(request, **extra):
    organization, actor = request.organization, request.actor
    teams = Team.objects.restrict(actor, "team.view").filter(organization=organization)
    manages = actor.can("apikey.manage", organization.pk)
    if not manages:
        # Members make keys in their own teams only (the service refuses the others).
        teams = teams.filter(memberships__user=request.user)
    return {
        "teams": teams.order_by("name"),
        "scopes": SCOPES,
        "models": sorted(usable_model_aliases(organization)),
        "holder_kinds": KEY_HOLDER_KINDS if manages else (),
        **extra,
    }


@require_GET
@org_page("apikey.view")
def keys(request):
    keys, search, state = _keys(request)
    page = Paginator(keys, KEYS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/keys.html",
        _context(
            request,
            page=page,
            search=search,
            state=state,
            states=KEY_STATES,
            now=timezone.now(),
            **_key_form_context(request),
        ),
    )


#: Whom an administrator's new key acts for: themselves, another member, or no one.
KEY_HOLDER_KINDS = (("self", "myself"), ("member", "another member"), ("service", "a service"))


def service_errors(exc: ValidationError | PermissionDenied) -> dict[str, str]:
    """A service's refusal as ``{field: message}`` for a form (``form``: no field)."""
    if isinstance(exc, PermissionDenied):
        message = (str(exc) or "your role does not allow this").rstrip(".")
        return {"form": message[:1].upper() + message[1:] + "."}
    mapping = getattr(exc, "message_dict", None) or {"__all__": exc.messages}
    return {("form" if field == "__all__" else field): " ".join(m) for field, m in mapping.items()}


def parse_expiry(value: str) -> dt.datetime | None:
    """A ``datetime-local`` value read as UTC; raises ValueError on anything else."""
    value = value.strip()
    if not value:
        return None
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


def find_user(users, name: str):
    """The one user of ``users`` (a User queryset) called ``name`` or whose email it is:
    (user, None) or (None, why not). An email two people share names no one."""
    name = name.strip()[:254]
    if not name:
        return None, "Give a user name or email."
    found = list(users.filter(username=name)[:1]) or list(users.filter(email__iexact=name)[:2])
    if len(found) != 1:
        why = "Several people share this email; use the user name." if found else None
        return None, why or f"No user is called {name!r}."
    return found[0], None


def _key_holder(request, errors: dict) -> tuple[bool, object]:
    """(asked for someone else, the user the key acts for or None for a service key)."""
    organization = request.organization
    kind = request.POST.get("holder_kind", "self")
    if kind == "service":
        return True, None
    if kind == "member":
        members = Membership.objects.restrict(request.actor, "member.view").filter(
            organization=organization
        )
        user, why = find_user(
            get_user_model().objects.filter(pk__in=members.values("user_id")),
            request.POST.get("holder", ""),
        )
        if user is None:
            errors["holder"] = f"{why} Name a member of this organization."
        return True, user
    # The signed-in user's own key; a platform administrator who is no member of the
    # organization makes a service key.
    return False, request.user if organization.pk in request.actor.roles else None


@require_POST
@org_page("apikey.create")
def key_create(request):
    organization, actor = request.organization, request.actor
    name = request.POST.get("name", "").strip()
    scopes = request.POST.getlist("scopes")
    team_id = request.POST.get("team") or None
    errors: dict[str, str] = {}
    status = 400
    team = None
    if not name:
        errors["name"] = "Give the key a name."
    elif len(name) > 100:
        errors["name"] = "At most 100 characters."
    if team_id:
        team = (
            Team.objects.restrict(actor, "team.view")
            .filter(organization=organization, pk=as_uuid(team_id))
            .first()
        )
        if team is None:
            errors["team"] = "Not a team of this organization."
    try:
        expires_at = parse_expiry(request.POST.get("expires_at", ""))
    except ValueError:
        expires_at = None
        errors["expires_at"] = "Use a date and time such as 2030-12-31T23:59 (UTC)."
    other, user = _key_holder(request, errors)
    if other and not actor.can("apikey.manage", organization.pk):
        # The service would quietly make a service key the member's own; say no instead.
        errors = {"form": "Members may only create keys for themselves."}
        status = 403
    if not errors:
        try:
            key, secret = tenancy_services.create_api_key(
                actor=actor,
                organization=organization,
                name=name,
                scopes=scopes,
                team=team,
                user=user,
                allowed_models=request.POST.getlist("allowed_models"),
                expires_at=expires_at,
            )
        except (ValidationError, PermissionDenied) as exc:
            errors = service_errors(exc)
            status = 403 if isinstance(exc, PermissionDenied) else 400
            if "user" in errors:  # the service's name for the holder field
                errors["holder"] = errors.pop("user")
        else:
            response = render(
                request, "console/key_created.html", _context(request, key=key, secret=secret)
            )
            # The secret is in this response only: never cached, stored or put in the session.
            response["Cache-Control"] = "no-store"
            return response
    keys, search, state = _keys(request)
    page = Paginator(keys, KEYS_PER_PAGE).get_page(1)
    return render(
        request,
        "console/keys.html",
        _context(
            request,
            page=page,
            search=search,
            state=state,
            states=KEY_STATES,
            now=timezone.now(),
            errors=errors,
            form=request.POST,
            chosen_models=request.POST.getlist("allowed_models"),
            expires_value=request.POST.get("expires_at", "")[:30],
            **_key_form_context(request),
        ),
        status=status,
    )


def as_uuid(value):
    """``value`` as a UUID, or None if it is not one (a look-up by it then finds nothing)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


@require_POST
@org_page("apikey.view")
def key_revoke(request, key_id):
    organization, actor = request.organization, request.actor
    key = (
        ApiKey.objects.restrict(actor, "apikey.view")
        .filter(organization=organization, pk=as_uuid(key_id))
        .first()
    )
    if key is None:
        raise Http404("No such key.")
    # The service decides: admins revoke any key, members their own.
    tenancy_services.revoke_api_key(actor=actor, key=key)
    return redirect("console:keys", org_slug=organization.slug)
