from django.urls import path

from controlplane.console import operations, people, platform, resources, views

app_name = "console"

ORG = views.ORG

urlpatterns = [
    path("", views.home, name="home"),
    path("signin/", views.SignInView.as_view(), name="signin"),
    path("signout/", views.SignOutView.as_view(), name="signout"),
    path(ORG, views.overview, name="overview"),
    path(ORG + "usage/", views.usage, name="usage"),
    path(ORG + "keys/", views.keys, name="keys"),
    path(ORG + "keys/new/", views.key_create, name="key-create"),
    path(ORG + "keys/<str:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    # Each page module lists its own routes.
    *people.urlpatterns,
    *resources.urlpatterns,
    *operations.urlpatterns,
    *platform.urlpatterns,
]
