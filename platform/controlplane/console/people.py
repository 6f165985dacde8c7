"""Console pages: me/ (own keys, change password), members/ and teams/ of an organization."""

from __future__ import annotations

urlpatterns: list = []
