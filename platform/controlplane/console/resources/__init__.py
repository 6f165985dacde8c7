"""Console pages of an organization's resources: models/, deployments/ and limits/,
one module each (forms in ``forms.py``)."""

from __future__ import annotations

from controlplane.console.resources import catalog, deployments, limits

urlpatterns = [*catalog.urlpatterns, *deployments.urlpatterns, *limits.urlpatterns]
