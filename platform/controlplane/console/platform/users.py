"""Users: create (with a one-time set-password link), new links, deactivate; and the
public page where the holder of a link chooses a password."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import (
    password_validators_help_texts,
    validate_password,
)
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Prefetch, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.encoding import force_bytes, force_str
from django.utils.http import base36_to_int, urlsafe_base64_decode, urlsafe_base64_encode
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.audit.services import record_event
from controlplane.console.platform.base import (
    PER_PAGE,
    no_store,
    page_context,
    platform_page,
)
from controlplane.console.views import service_errors
from controlplane.tenancy import services as tenancy_services
from controlplane.tenancy.actors import Actor
from controlplane.tenancy.models import Membership
from controlplane.tenancy.permissions import require

User = get_user_model()


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


def link_page(request, user, link, **extra):
    return no_store(
        render(
            request,
            "console/platform/link.html",
            page_context(request, "users", link_user=user, link=link, **extra),
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
        return no_store(response)
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
    return no_store(response)


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
        page_context(request, "users", page=page, search=search, **extra),
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
        return _users_page(request, status=400, errors=service_errors(exc), form=form)
    return link_page(request, user, link)


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
        return _users_page(request, status=400, errors=service_errors(exc))
    return link_page(request, user, link)


@require_POST
@platform_page
def user_deactivate(request, user_id):
    user = _user_or_404(user_id)
    try:
        tenancy_services.deactivate_user(actor=request.actor, user=user)
    except ValidationError as exc:
        return _users_page(request, status=400, errors=service_errors(exc))
    return redirect("console:platform-users")
