"""Settings for the test suite: the production settings module with test defaults
for what it reads from the environment (real PostgreSQL and Redis of this machine)."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-use")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sap")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ.setdefault("PLATFORM_DATA_DIR", tempfile.mkdtemp(prefix="sap-test-data-"))

from controlplane.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast test users

# Separate test databases let several test runs share one PostgreSQL server.
DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ.get(  # noqa: F405
    "TEST_DATABASE_NAME", "test_sap"
)
