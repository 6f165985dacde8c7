"""Console pages: audit/ and playground/ of an organization."""

from __future__ import annotations

urlpatterns: list = []
