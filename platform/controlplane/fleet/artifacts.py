"""The control plane's side of an artifact fetch: run ``workers.artifacts`` for one
``ArtifactFetch`` row, keep its progress current, refuse sources the platform may not
reach, and record the manifest of a first import through the catalog's service."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from controlplane import netsafety
from controlplane.audit.services import record_event
from controlplane.catalog.models import SourceType
from controlplane.env import env_str
from controlplane.fleet import services
from controlplane.fleet.models import ArtifactFetch, FetchState
from controlplane.netsafety import check_url
from controlplane.tenancy.actors import Actor
from workers import artifacts
from workers.safepath import UnsafePath, path_within

log = logging.getLogger(__name__)
FETCHER = Actor.system("artifact-fetcher")
PROGRESS_EVERY_SECONDS = 1.0


def _guard(url: str) -> None:
    """Refuse a hub endpoint that resolves inside the house unless allowed."""
    try:
        check_url(url, allow_internal=False, field="endpoint")
    except ValidationError as exc:
        raise artifacts.ArtifactError("; ".join(exc.messages)) from None


def _target(path: str) -> Path:
    try:
        return path_within(services.model_cache_dir(), Path(path).absolute())
    except UnsafePath as exc:
        raise artifacts.ArtifactError(f"target {exc}") from None


def _progress_writer(fetch_id):
    last = [0.0]

    def write(done: int, total: int, files_done: int, files_total: int) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_SECONDS and files_done < files_total:
            return
        last[0] = now
        ArtifactFetch.objects.filter(pk=fetch_id).update(
            bytes_done=done, bytes_total=total, files_done=files_done, files_total=files_total
        )

    return write


def run_fetch(fetch_id: str, *, downloader=None) -> str:
    fetch = (
        ArtifactFetch.objects.select_related("model_version__model", "node")
        .filter(pk=fetch_id)
        .first()
    )
    if fetch is None:
        return "unknown"
    if fetch.state == FetchState.DONE:
        return "done"
    ArtifactFetch.objects.filter(pk=fetch.pk).update(state=FetchState.RUNNING, error="")
    version = fetch.model_version
    progress = _progress_writer(fetch.pk)
    try:
        # Whatever the row says, files only ever land inside the model cache.
        target = _target(fetch.target_path)
        if version.source_type == SourceType.LOCAL:
            result = artifacts.fetch_local(
                Path(version.local_path),
                target,
                version.file_manifest,
                link=True,
                progress=progress,
            )
        elif version.source_type == SourceType.HUGGINGFACE:
            kwargs = {"downloader": downloader} if downloader else {}
            result = artifacts.fetch_huggingface(
                version.hf_repo,
                version.revision,
                target,
                version.file_manifest,
                endpoint=env_str("HF_ENDPOINT") or None,
                url_guard=_guard,
                guard=netsafety.guard(),
                progress=progress,
                **kwargs,
            )
        else:
            raise artifacts.ArtifactError("an external model has no files")
    except (artifacts.ArtifactError, OSError, ImportError) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, ImportError):
            message = "huggingface_hub is not installed on this worker"
        with transaction.atomic():
            ArtifactFetch.objects.filter(pk=fetch.pk).update(
                state=FetchState.FAILED, error=message[:4000], finished_at=timezone.now()
            )
            record_event(
                actor=FETCHER,
                action="artifact.fetch_failed",
                target=fetch,
                changes={"error": [None, message[:500]]},
            )
        log.warning("fetch of %s failed: %s", version, message)
        return "failed"
    with transaction.atomic():
        if not version.file_manifest:
            services.record_manifest(actor=FETCHER, version=version, manifest=result.manifest)
        ArtifactFetch.objects.filter(pk=fetch.pk).update(
            state=FetchState.DONE,
            bytes_done=result.bytes_total,
            bytes_total=result.bytes_total,
            files_done=len(result.manifest),
            files_total=len(result.manifest),
            finished_at=timezone.now(),
            error=(
                f"contains Python files ({', '.join(result.remote_code_files[:5])}) that only "
                "run if an administrator approves trust_remote_code"
                if result.remote_code_files and not services.trust_remote_code(version)
                else ""
            ),
        )
        record_event(
            actor=FETCHER,
            action="artifact.fetched",
            target=fetch,
            changes={"files": [None, len(result.manifest)], "bytes": [None, result.bytes_total]},
        )
        services.request_reconcile()
    return "done"
