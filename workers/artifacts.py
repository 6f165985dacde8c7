"""Model artifacts: bring a model's files into a model cache and verify them.

No Django here: the control plane's fetch task and the node agent call the same
functions. Every file is checked against its sha256 from the catalog manifest; with no
manifest yet, one is built (the caller records it: trust on first use). Paths are
confined to the model folder: a manifest entry, bundle member or symlink that escapes
it is refused. Files land in a temporary folder beside the target and the folder is
renamed into place only once everything verified, so a half-fetched model is never
served.

Sources
- ``fetch_local``: a folder (copied, or hard-linked when on the same filesystem) or an
  air-gapped bundle (a ``.tar``/``.tar.gz`` file, extracted with member checks).
- ``fetch_huggingface``: a repository at a pinned revision through ``huggingface_hub``
  (injected as ``downloader`` so that it is testable without a network). Every HTTP
  request of the download, redirects included, goes through ``GuardedTransport``: the
  host is resolved once, checked by the URL guard (``gateway.netguard``) and the
  connection made to the checked address, with the Host header and TLS name (SNI and
  certificate check) of the original host.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.netguard import NetGuard, UnsafeURL
from workers.safepath import UnsafePath, path_within

CHUNK = 1024 * 1024
Progress = Callable[[int, int, int, int], None]  # bytes_done, bytes_total, files_done, total


class ArtifactError(Exception):
    """A fetch that must not go on (checksum mismatch, unsafe path, missing file)."""


@dataclass
class FetchResult:
    path: Path
    manifest: dict[str, str]
    bytes_total: int
    remote_code_files: list[str]


def _noop(*_args) -> None:
    return None


def safe_relative(name: str) -> PurePosixPath:
    """A manifest or bundle path, refused unless it stays inside the model folder."""
    pure = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or pure.is_absolute()
        or ".." in pure.parts
        or pure.as_posix() != name  # "a//b", "./a", "a/": one spelling per file
    ):
        raise ArtifactError(f"{name!r} is not a safe relative path")
    return pure


def sha256_file(path: Path, progress: Callable[[int], None] = _noop) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            progress(len(chunk))
    return digest.hexdigest()


def _inside(root: Path, path: Path) -> bool:
    try:
        path_within(root, Path(path).absolute())
    except UnsafePath:
        return False
    return True


def _member(root: Path, name: str) -> Path:
    """The file ``name`` (a manifest entry) of the model folder ``root``, proven inside."""
    try:
        return path_within(root, safe_relative(name))
    except UnsafePath:
        raise ArtifactError(f"{name} links outside the model folder") from None


def list_files(model_dir: Path) -> list[str]:
    """Relative paths of the regular files under model_dir; a symlink that leads
    outside it is refused (one inside is followed)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(f"{model_dir} is not a folder")
    names = []
    for root, dirs, files in os.walk(model_dir, followlinks=False):
        for name in list(dirs) + files:
            path = Path(root) / name
            if path.is_symlink() and not _inside(model_dir, path):
                raise ArtifactError(f"{path.relative_to(model_dir)} links outside the model folder")
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, .cache of the hub
        for name in files:
            path = Path(root) / name
            if path.is_file():
                names.append(path.relative_to(model_dir).as_posix())
    return sorted(names)


def build_manifest(model_dir: Path, progress: Progress = _noop) -> dict[str, str]:
    names = list_files(model_dir)
    sizes = {n: (Path(model_dir) / n).stat().st_size for n in names}
    total = sum(sizes.values())
    done = 0
    manifest = {}
    for count, name in enumerate(names, 1):
        manifest[name] = sha256_file(Path(model_dir) / name)
        done += sizes[name]
        progress(done, total, count, len(names))
    return manifest


def verify_dir(model_dir: Path, manifest: dict[str, str], progress: Progress = _noop) -> int:
    """Check every manifest file's sha256; returns the bytes checked."""
    model_dir = Path(model_dir)
    paths = {}
    for name in manifest:
        if not (model_dir / safe_relative(name)).is_file():
            raise ArtifactError(f"{name} is missing")
        paths[name] = _member(model_dir, name)
    total = sum(p.stat().st_size for p in paths.values())
    done = 0
    for count, (name, path) in enumerate(sorted(paths.items()), 1):
        digest = sha256_file(path)
        if digest != manifest[name]:
            raise ArtifactError(f"{name}: sha256 {digest} does not match the manifest")
        done += path.stat().st_size
        progress(done, total, count, len(paths))
    return total


def remote_code_files(names) -> list[str]:
    """Python files in a model folder: code that only trust_remote_code would run."""
    return sorted(n for n in names if n.endswith(".py"))


def _staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def _publish(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


def _copy_file(source: Path, dest: Path, link: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, dest)
            return
        except OSError:
            pass  # another filesystem: copy
    shutil.copyfile(source, dest)


def _extract_bundle(bundle: Path, into: Path) -> None:
    with tarfile.open(bundle) as archive:
        for member in archive.getmembers():
            safe_relative(member.name.removeprefix("./"))
            if not (member.isfile() or member.isdir()):
                raise ArtifactError(f"bundle member {member.name} is not a plain file or folder")
        archive.extractall(into, filter="data")


def _finish(staging: Path, target: Path, manifest: dict[str, str], progress: Progress):
    if manifest:
        # Only the files the manifest names are kept: nothing unverified is served.
        listed = set(manifest)
        for name in list_files(staging):
            if name not in listed:
                (staging / name).unlink()
        total = verify_dir(staging, manifest, progress)
    else:
        manifest = build_manifest(staging, progress)
        total = sum((staging / n).stat().st_size for n in manifest)
    _publish(staging, target)
    return FetchResult(
        path=target,
        manifest=manifest,
        bytes_total=total,
        remote_code_files=remote_code_files(manifest),
    )


def fetch_local(
    source: Path,
    target: Path,
    manifest: dict[str, str] | None = None,
    *,
    link: bool = False,
    progress: Progress = _noop,
) -> FetchResult:
    """Copy (or hard-link) a local model folder, or extract a bundle, into ``target``."""
    source, target = Path(source), Path(target)
    manifest = dict(manifest or {})
    for name in manifest:
        safe_relative(name)
    staging = _staging(target)
    try:
        if source.is_file():
            _extract_bundle(source, staging)
            inner = [p for p in staging.iterdir()]
            if len(inner) == 1 and inner[0].is_dir() and not (staging / "config.json").exists():
                # a bundle that wraps the model in one top folder
                for child in inner[0].iterdir():
                    child.rename(staging / child.name)
                inner[0].rmdir()
        elif source.is_dir():
            names = list(manifest) if manifest else list_files(source)
            for name in names:
                if not (source / safe_relative(name)).is_file():
                    raise ArtifactError(f"{name} is missing from {source}")
                _copy_file(_member(source, name), staging / name, link)
        else:
            raise ArtifactError(f"{source} does not exist")
        return _finish(staging, target, manifest, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def guarded_transport(guard: NetGuard, httpx_module: Any = None) -> Any:
    """An HTTP transport (of ``httpx`` or an API-compatible fork) that sends every
    request to an address the guard checked: resolve once, check, connect there."""
    if httpx_module is None:
        import httpx as httpx_module

    class GuardedTransport(httpx_module.HTTPTransport):
        def handle_request(self, request):
            url = request.url
            try:
                target = guard.check_url(str(url))
            except UnsafeURL as exc:
                raise ArtifactError(f"refused {url.scheme}://{url.host}: {exc}") from None
            # The Host header was set from the original URL and stays; TLS checks the
            # certificate against the original name (SNI).
            request.url = url.copy_with(host=target.addresses[0])
            request.extensions = {**request.extensions, "sni_hostname": target.host}
            return super().handle_request(request)

    return GuardedTransport()


def _route_hub_through(guard: NetGuard) -> None:
    """Make huggingface_hub's shared HTTP client use the guarded transport."""
    import huggingface_hub
    from huggingface_hub import constants

    set_factory = getattr(huggingface_hub, "set_client_factory", None)
    if set_factory is None:
        raise ArtifactError(
            "this huggingface_hub cannot route downloads through the URL guard; "
            "install huggingface_hub 1.0 or later"
        )
    from huggingface_hub.utils import _http as hub_http

    module = getattr(hub_http, "httpx2", None) or hub_http.httpx
    hook = getattr(hub_http, "hf_request_event_hook", None)
    # The Xet protocol downloads outside the HTTP client: keep every byte on the guard.
    constants.HF_HUB_DISABLE_XET = True

    def factory():
        return module.Client(
            transport=guarded_transport(guard, module),
            event_hooks={"request": [hook]} if hook else {},
            follow_redirects=True,  # each hop goes through the transport: re-checked
            timeout=None,
        )

    set_factory(factory)


def hub_download(
    repo: str,
    revision: str,
    local_dir: Path,
    allow_patterns,
    endpoint,
    *,
    guard: NetGuard | None = None,
) -> None:
    """huggingface_hub's snapshot download, imported only when used."""
    from huggingface_hub import snapshot_download

    _route_hub_through(guard or NetGuard())

    snapshot_download(
        repo_id=repo,
        revision=revision,
        local_dir=str(local_dir),
        allow_patterns=allow_patterns,
        endpoint=endpoint,
    )


def fetch_huggingface(
    repo: str,
    revision: str,
    target: Path,
    manifest: dict[str, str] | None = None,
    *,
    endpoint: str | None = None,
    url_guard: Callable[[str], None] | None = None,
    guard: NetGuard | None = None,
    downloader: Callable[..., None] = hub_download,
    progress: Progress = _noop,
) -> FetchResult:
    """Download ``repo`` at the pinned ``revision`` (40 hex) and verify it.
    ``url_guard`` refuses an endpoint (a mirror) the platform may not reach; ``guard``
    (with the administrator's allow list) checks every connection of the download."""
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ArtifactError("the revision must be pinned to a 40-character commit hash")
    if endpoint and url_guard is not None:
        url_guard(endpoint)
    manifest = dict(manifest or {})
    for name in manifest:
        safe_relative(name)
    if downloader is hub_download:
        downloader = functools.partial(hub_download, guard=guard)
    target = Path(target)
    staging = _staging(target)
    try:
        downloader(repo, revision, staging, sorted(manifest) or None, endpoint)
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        return _finish(staging, target, manifest, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
