"""Console pages: Platform administrator pages under /console/platform/."""

from __future__ import annotations

urlpatterns: list = []
