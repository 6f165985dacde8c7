"""Forms of the resource pages: they parse and label the input; the services decide.

Django renders each field with its label, ``aria-invalid`` and an error list whose id
the input names in ``aria-describedby``; a service's ``ValidationError`` lands on the
field it names (``service_error``), anything else above the form."""

from __future__ import annotations

from django import forms
from django.core.exceptions import PermissionDenied, ValidationError

from controlplane.catalog.models import Dtype, Openness, Quantization
from controlplane.fleet.models import ScaleTarget
from controlplane.quotas.models import FAIL_MODES, LIMIT_FIELDS, LimitPolicy


class ConsoleForm(forms.Form):
    def __init__(self, *args, prefix_id: str = "", **kwargs):
        # Several forms share a page: element ids carry the form's own prefix.
        kwargs.setdefault("auto_id", f"{prefix_id}-%s" if prefix_id else "id_%s")
        super().__init__(*args, **kwargs)


def service_error(form: forms.Form, exc: ValidationError | PermissionDenied) -> int:
    """Put a service's refusal on the form; the status to answer with (400 or 403)."""
    if isinstance(exc, PermissionDenied):
        form.add_error(None, str(exc) or "Your role does not allow this.")
        return 403
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            if field in form.fields and field != "__all__":
                for message in errors:
                    form.add_error(field, message)
            else:
                label = "" if field in ("__all__", None) else f"{field}: "
                for message in errors:
                    form.add_error(None, label + message)
    else:
        for message in exc.messages:
            form.add_error(None, message)
    return 400


# --------------------------------------------------------------------------- models
class GrantForm(ConsoleForm):
    model = forms.CharField(
        label="Model alias", max_length=64, help_text="A model of the platform's catalog."
    )


class PolicyForm(ConsoleForm):
    allowed_openness = forms.MultipleChoiceField(
        label="Allowed openness",
        choices=Openness.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    require_commercial_use = forms.BooleanField(
        label="Only models whose licence allows commercial use", required=False
    )
    log_prompts = forms.BooleanField(
        label="Log prompts and completions of this organization's requests", required=False
    )


# --------------------------------------------------------------------------- deployments
def _optional_int(label, *, minimum=0, maximum=None, help_text=""):
    return forms.IntegerField(
        label=label, required=False, min_value=minimum, max_value=maximum, help_text=help_text
    )


class ScaleForm(ConsoleForm):
    replicas = forms.IntegerField(label="Replicas", min_value=0, max_value=64)
    min_replicas = _optional_int(
        "Autoscale from (min replicas)",
        maximum=64,
        help_text="Empty: a fixed number of replicas. 0: scale to zero when idle.",
    )
    max_replicas = _optional_int("Autoscale up to (max replicas)", maximum=64)


class DeploymentSpecForm(ConsoleForm):
    """What a replica runs; changing it rolls the replicas over one at a time."""

    version = forms.CharField(
        label="Version",
        max_length=64,
        required=False,
        help_text="A catalog version of the model; empty: its default version.",
    )
    pool = forms.ChoiceField(label="Pool")
    tensor_parallel_size = forms.IntegerField(
        label="GPUs per replica (tensor parallel size)", min_value=1, max_value=16, initial=1
    )
    max_model_len = _optional_int(
        "Context length (max model len)", minimum=16, help_text="Empty: the catalog's."
    )
    gpu_memory_fraction = forms.FloatField(
        label="GPU memory fraction",
        required=False,
        min_value=0.01,
        max_value=1.0,
        help_text="Reserve this fraction of each GPU; empty: estimate from the model's size.",
    )
    dtype = forms.ChoiceField(
        label="Data type", choices=[("", "catalog default"), *Dtype.choices], required=False
    )
    quantization = forms.ChoiceField(
        label="Quantization",
        choices=[("", "catalog default"), *Quantization.choices],
        required=False,
    )
    enable_lora = forms.BooleanField(label="Enable LoRA adapters", required=False)
    selector = forms.JSONField(
        label="Node selector (JSON object of labels)",
        required=False,
        initial=dict,  # an empty form shows {} (Django renders no value as null)
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    engine_args = forms.JSONField(
        label="Engine arguments (JSON object)",
        required=False,
        initial=dict,  # an empty form shows {} (Django renders no value as null)
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    scale_target = forms.ChoiceField(
        label="Autoscaling target", choices=ScaleTarget.choices, initial=ScaleTarget.WAITING
    )
    scale_target_value = forms.FloatField(
        label="Autoscaling target value", min_value=0.01, max_value=1000, initial=2.0
    )
    scale_down_delay_seconds = forms.IntegerField(
        label="Scale down after (seconds)", min_value=1, max_value=86_400, initial=300
    )

    def __init__(self, *args, pools=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pool"].choices = [(name, name) for name in pools]

    def service_fields(self) -> dict:
        data = dict(self.cleaned_data)
        data["selector"] = data.get("selector") or {}
        data["engine_args"] = data.get("engine_args") or {}
        if not data.get("version"):
            data.pop("version", None)
        for name in ("selector", "engine_args"):
            if not isinstance(data[name], dict):
                raise ValidationError({name: "Must be a JSON object."})
        return data


class DeploymentCreateForm(DeploymentSpecForm):
    name = forms.CharField(
        label="Name", max_length=50, help_text="Lowercase letters, digits and hyphens."
    )
    model = forms.ChoiceField(label="Model")
    replicas = forms.IntegerField(label="Replicas", min_value=0, max_value=64, initial=1)
    min_replicas = ScaleForm.base_fields["min_replicas"]
    max_replicas = ScaleForm.base_fields["max_replicas"]

    field_order = ["name", "model", "version", "pool", "replicas", "min_replicas", "max_replicas"]

    def __init__(self, *args, models=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(alias, alias) for alias in models]


# --------------------------------------------------------------------------- limits
LIMIT_LABELS = {
    "rpm": "Requests per minute",
    "tpm": "Tokens per minute",
    "concurrency": "Requests in flight at once",
    "daily_tokens": "Tokens per UTC day",
    "monthly_tokens": "Tokens per UTC month",
    "max_tokens": "Largest max_tokens of one request",
}


class LimitValuesForm(ConsoleForm):
    def __init__(self, *args, fail_mode: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        for name in LIMIT_FIELDS:
            self.fields[name] = forms.IntegerField(
                label=LIMIT_LABELS[name], required=False, min_value=1
            )
        if fail_mode:
            self.fields["fail_mode"] = forms.ChoiceField(
                label="When the limit store is unreachable",
                choices=FAIL_MODES,
                required=False,
                help_text="Only the organization's limits for all models have a fail mode.",
            )

    def limits(self) -> dict:
        return {
            name: self.cleaned_data.get(name)
            for name in (*LIMIT_FIELDS, "fail_mode")
            if name in self.fields
        }


SUBJECTS = [("organization", "The organization"), ("team", "A team"), ("key", "A key")]


class LimitCreateForm(LimitValuesForm):
    def __init__(self, *args, teams=(), models=(), **kwargs):
        super().__init__(*args, **kwargs)
        base = dict(self.fields)
        self.fields.clear()
        self.fields["subject"] = forms.ChoiceField(label="Applies to", choices=SUBJECTS)
        self.fields["team"] = forms.ChoiceField(
            label="Team (when it applies to a team)",
            choices=[("", "–"), *((str(t.pk), t.name) for t in teams)],
            required=False,
        )
        self.fields["api_key"] = forms.CharField(
            label="Key prefix (when it applies to a key)",
            max_length=20,
            required=False,
            help_text="As the keys page shows it, e.g. sk-abc123def456.",
        )
        self.fields["model"] = forms.ChoiceField(
            label="Model",
            choices=[("", "all models"), *((alias, alias) for alias in models)],
            required=False,
        )
        self.fields.update(base)


def limit_form_initial(policy: LimitPolicy) -> dict:
    return {name: getattr(policy, name) for name in (*LIMIT_FIELDS, "fail_mode")}
