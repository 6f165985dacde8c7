"""Console pages: models/, deployments/ and limits/ of an organization."""

from __future__ import annotations

urlpatterns: list = []
