"""Paths built from user input (aliases, versions, manifest entries, fetch targets,
replica sources) never leave their root: one helper, used everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from controlplane.catalog.models import ModelVersion
from controlplane.catalog.services import create_model, create_version
from controlplane.fleet import artifacts as fleet_artifacts
from controlplane.fleet.models import ArtifactFetch
from controlplane.fleet.services import cache_path_for, start_fetch
from django.core.exceptions import ValidationError

from tests.conftest import SYSTEM
from workers.agent.engine import SpecError, model_path_for
from workers.safepath import UnsafePath, check_name, path_within

BAD_NAMES = ["../../x", "..", "a/b", "/abs", ".hidden", "a..b", "", "x" * 65, "a\x00b", "a b"]


def test_path_within_stays_inside(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    assert path_within(root, "m", "v1") == (root / "m" / "v1").resolve()
    for parts in [("..", "x"), ("m/../../x",), ("/etc/passwd",), (tmp_path / "other",)]:
        with pytest.raises(UnsafePath):
            path_within(root, *parts)
    os.symlink(tmp_path, root / "escape")
    with pytest.raises(UnsafePath):
        path_within(root, "escape", "secret")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name):
    with pytest.raises(UnsafePath):
        check_name(name)


@pytest.fixture
def cached_model(db, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEET_MODEL_CACHE", str(tmp_path / "cache"))
    return create_model(
        actor=SYSTEM,
        alias="path-m",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )


@pytest.mark.parametrize("name", ["../../x", "..", "a/b", ".x", "a..b"])
def test_a_version_name_that_is_a_path_is_a_400_naming_the_field(world, clients, name):
    admin = clients["platform_admin"]
    r = admin.post(
        "/api/v1/models/tiny-chat/versions/",
        {"version": name, "source_type": "huggingface", "hf_repo": "o/m", "revision": "a" * 40},
        format="json",
    )
    assert r.status_code == 400, r.content
    assert "version" in r.json()["error"]["fields"]
    assert not ModelVersion.objects.filter(version=name).exists()


def test_the_service_refuses_it_too(cached_model):
    with pytest.raises(ValidationError) as info:
        create_version(
            actor=SYSTEM,
            model=cached_model,
            version="../../x",
            source_type="huggingface",
            hf_repo="o/m",
            revision="a" * 40,
        )
    assert "version" in info.value.message_dict


def test_a_bad_name_already_in_the_database_never_leaves_the_cache(cached_model, tmp_path):
    version = create_version(
        actor=SYSTEM,
        model=cached_model,
        version="v1",
        source_type="huggingface",
        hf_repo="o/m",
        revision="a" * 40,
    )
    assert cache_path_for(version).is_relative_to((tmp_path / "cache").resolve())
    ModelVersion.objects.filter(pk=version.pk).update(version="../../../x")
    version.refresh_from_db()
    with pytest.raises(ValidationError) as info:
        cache_path_for(version)
    assert "version" in info.value.message_dict
    with pytest.raises(ValidationError):
        start_fetch(actor=SYSTEM, version=version)


def test_a_fetch_target_outside_the_cache_is_refused(cached_model, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    version = create_version(
        actor=SYSTEM, model=cached_model, version="v1", source_type="local", local_path=str(source)
    )
    fetch = start_fetch(actor=SYSTEM, version=version)
    outside = tmp_path / "elsewhere"
    ArtifactFetch.objects.filter(pk=fetch.pk).update(target_path=str(outside))
    assert fleet_artifacts.run_fetch(str(fetch.pk)) == "failed"
    assert "outside" in ArtifactFetch.objects.get(pk=fetch.pk).error
    assert not outside.exists()


def test_the_agent_keeps_relative_sources_in_its_model_cache(tmp_path):
    cache = tmp_path / "models"
    cache.mkdir()
    spec = {"source": {"path": "m/v1"}}
    assert model_path_for(spec, cache) == (cache / "m" / "v1").resolve()
    for bad in ["../../etc", "m/../../x"]:
        with pytest.raises(SpecError, match=r"source\.path"):
            model_path_for({"source": {"path": bad}}, cache)
    assert model_path_for({"source": {"path": "/srv/models/x"}}, cache) == Path("/srv/models/x")
