"""Model artifacts: fetch, verify, refuse unsafe paths and sources; progress in the API."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from controlplane.audit.models import AuditEvent
from controlplane.catalog.models import ModelVersion
from controlplane.catalog.services import create_model, create_version
from controlplane.fleet import artifacts as fleet_artifacts
from controlplane.fleet.models import ArtifactFetch
from controlplane.fleet.services import start_fetch
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import SYSTEM
from workers import artifacts


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_bytes(b'{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(b"x" * 5000)
    return root


def manifest_of(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()
    }


# --------------------------------------------------------------------------- pure functions
def test_fetch_local_copies_verifies_and_reports_progress(model_dir, tmp_path):
    seen = []
    manifest = manifest_of(model_dir)
    result = artifacts.fetch_local(
        model_dir, tmp_path / "cache" / "m", manifest, progress=lambda *a: seen.append(a)
    )
    assert (result.path / "sub" / "weights.bin").read_bytes() == b"x" * 5000
    assert result.manifest == manifest and result.bytes_total == 5008
    assert seen[-1] == (5008, 5008, 2, 2)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_first_import_builds_the_manifest(model_dir, tmp_path):
    result = artifacts.fetch_local(model_dir, tmp_path / "m")
    assert result.manifest == manifest_of(model_dir)


def test_checksum_mismatch_is_refused_and_leaves_nothing(model_dir, tmp_path):
    manifest = manifest_of(model_dir)
    manifest["config.json"] = "0" * 64
    with pytest.raises(artifacts.ArtifactError, match="does not match"):
        artifacts.fetch_local(model_dir, tmp_path / "cache" / "m", manifest)
    assert list((tmp_path / "cache").iterdir()) == []


def test_files_outside_the_manifest_are_not_served(model_dir, tmp_path):
    manifest = manifest_of(model_dir)
    (model_dir / "evil.py").write_text("import os")
    result = artifacts.fetch_local(model_dir, tmp_path / "m", manifest)
    assert not (result.path / "evil.py").exists()
    assert result.remote_code_files == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a\\b", "", "a//b"])
def test_traversal_in_manifest_is_refused(model_dir, tmp_path, name):
    with pytest.raises(artifacts.ArtifactError, match="not a safe relative path"):
        artifacts.fetch_local(model_dir, tmp_path / "m", {name: "0" * 64})


def test_symlink_escaping_the_model_folder_is_refused(model_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, model_dir / "leak.txt")
    with pytest.raises(artifacts.ArtifactError, match="outside"):
        artifacts.fetch_local(model_dir, tmp_path / "m")
    with pytest.raises(artifacts.ArtifactError, match="outside"):
        artifacts.fetch_local(model_dir, tmp_path / "m", {"leak.txt": sha(b"top secret")})


def _bundle(tmp_path, members) -> Path:
    path = tmp_path / "bundle.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_air_gapped_bundle(tmp_path):
    bundle = _bundle(
        tmp_path, [("model/config.json", b"{}", "file"), ("model/w.bin", b"w", "file")]
    )
    manifest = {"config.json": sha(b"{}"), "w.bin": sha(b"w")}
    result = artifacts.fetch_local(bundle, tmp_path / "m", manifest)
    assert (result.path / "w.bin").read_bytes() == b"w"


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", b"x", "file")],
        [("/abs", b"x", "file")],
        [("link", "/etc/passwd", "sym")],
    ],
)
def test_unsafe_bundles_are_refused(tmp_path, members):
    with pytest.raises(artifacts.ArtifactError):
        artifacts.fetch_local(_bundle(tmp_path, members), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_huggingface_fetch_with_a_fake_hub(tmp_path):
    calls = []

    def fake_hub(repo, revision, local_dir, allow_patterns, endpoint):
        calls.append((repo, revision, allow_patterns, endpoint))
        (local_dir / ".cache").mkdir()
        (local_dir / "config.json").write_bytes(b"{}")
        (local_dir / "modeling_x.py").write_text("code")

    rev = "a" * 40
    result = artifacts.fetch_huggingface("org/model", rev, tmp_path / "m", downloader=fake_hub)
    assert calls == [("org/model", rev, None, None)]
    assert set(result.manifest) == {"config.json", "modeling_x.py"}
    assert result.remote_code_files == ["modeling_x.py"]
    with pytest.raises(artifacts.ArtifactError, match="pinned"):
        artifacts.fetch_huggingface("org/model", "main", tmp_path / "n", downloader=fake_hub)
    refused = []

    def guard(url):
        refused.append(url)
        raise artifacts.ArtifactError("internal")

    with pytest.raises(artifacts.ArtifactError, match="internal"):
        artifacts.fetch_huggingface(
            "org/model",
            rev,
            tmp_path / "o",
            endpoint="http://10.0.0.1",
            url_guard=guard,
            downloader=fake_hub,
        )
    assert refused == ["http://10.0.0.1"] and len(calls) == 1


# --------------------------------------------------------------------------- the task and API
@pytest.fixture
def local_version(world, model_dir, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEET_MODEL_CACHE", str(tmp_path / "cache"))
    model = create_model(
        actor=SYSTEM,
        alias="local-m",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )
    return create_version(
        actor=SYSTEM,
        model=model,
        version="v1",
        source_type="local",
        local_path=str(model_dir),
        context_length=128,
    )


@pytest.mark.django_db
def test_fetch_task_records_the_manifest_on_first_import(local_version, clients, model_dir):
    response = clients["platform_admin"].post(
        "/api/v1/fleet/artifact-fetches/", {"model": "local-m"}, format="json"
    )
    assert response.status_code == 201, response.content
    fetch_id = response.json()["id"]
    assert clients["owner_a"].get("/api/v1/fleet/artifact-fetches/").status_code == 403
    assert fleet_artifacts.run_fetch(fetch_id) == "done"
    body = clients["platform_admin"].get(f"/api/v1/fleet/artifact-fetches/{fetch_id}/").json()
    assert body["state"] == "done" and body["bytes_done"] == body["bytes_total"] == 5008
    assert body["files_done"] == 2
    local_version.refresh_from_db()
    assert local_version.file_manifest == manifest_of(model_dir)
    assert AuditEvent.objects.filter(action="model_version.manifest_recorded").exists()
    assert fleet_artifacts.run_fetch(fetch_id) == "done"  # idempotent


@pytest.mark.django_db
def test_fetch_task_fails_clearly_on_tampered_files(local_version, model_dir):
    ModelVersion.objects.filter(pk=local_version.pk).update(
        file_manifest={**manifest_of(model_dir), "config.json": "1" * 64}
    )
    local_version.refresh_from_db()
    fetch = start_fetch(actor=SYSTEM, version=local_version)
    assert fleet_artifacts.run_fetch(str(fetch.pk)) == "failed"
    fetch = ArtifactFetch.objects.get(pk=fetch.pk)
    assert fetch.state == "failed" and "does not match" in fetch.error


@pytest.mark.django_db
def test_fetch_task_refuses_an_internal_hub_mirror(world, monkeypatch, tmp_path):
    monkeypatch.setenv("FLEET_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    model = create_model(
        actor=SYSTEM,
        alias="hub-m",
        task="chat",
        license_id="mit",
        commercial_use=True,
        openness="open-weights",
    )
    version = create_version(
        actor=SYSTEM,
        model=model,
        version="v1",
        source_type="huggingface",
        hf_repo="org/model",
        revision="b" * 40,
    )
    fetch = start_fetch(actor=SYSTEM, version=version)
    assert fleet_artifacts.run_fetch(str(fetch.pk), downloader=lambda *a: None) == "failed"
    assert "internal address" in ArtifactFetch.objects.get(pk=fetch.pk).error
    monkeypatch.setenv("ALLOWED_INTERNAL_HOSTS", "127.0.0.1")

    def fake_hub(repo, revision, local_dir, allow_patterns, endpoint):
        (local_dir / "config.json").write_bytes(b"{}")

    fetch = start_fetch(actor=SYSTEM, version=version)
    assert fleet_artifacts.run_fetch(str(fetch.pk), downloader=fake_hub) == "done"


@pytest.mark.django_db
def test_unknown_model_fetch_is_a_400(clients, world):
    response = clients["platform_admin"].post(
        "/api/v1/fleet/artifact-fetches/", {"model": "nope"}, format="json"
    )
    assert response.status_code == 400 and "model" in response.json()["error"]["fields"]


# --------------------------------------------------------------------------- commands
@pytest.mark.django_db
def test_make_tiny_model_runs_the_engine_python_and_registers(tmp_path, capsys):
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "-m workers.engine.tinymodel" ] || exit 3\n'
        'mkdir -p "$3" && echo "{}" > "$3/config.json" && echo w > "$3/model.safetensors"\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "tiny"
    call_command("make_tiny_model", "--out", str(out), "--engine-python", str(fake))
    version = ModelVersion.objects.get(model__alias="tiny-chat")
    assert version.local_path == str(out.resolve()) and version.source_type == "local"
    assert version.file_manifest == manifest_of(out)
    assert version.context_length == 2048 and version.parameter_count > 1_000_000
    call_command("make_tiny_model", "--out", str(out), "--engine-python", str(fake))  # idempotent
    assert "already registered" in capsys.readouterr().out
    (out / "model.safetensors").write_text("changed")
    with pytest.raises(CommandError, match="new version"):
        call_command("make_tiny_model", "--out", str(out), "--engine-python", str(fake))
    with pytest.raises(CommandError, match="does not exist"):
        call_command("make_tiny_model", "--engine-python", str(tmp_path / "nope"))


@pytest.mark.django_db
def test_register_minilm(model_dir):
    call_command("register_minilm", "--model-dir", str(model_dir))
    version = ModelVersion.objects.get(model__alias="minilm")
    assert version.model.task == "embedding" and version.file_manifest == manifest_of(model_dir)
