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
  (injected as ``downloader`` so that it is testable without a network).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


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
        path = model_dir / safe_relative(name)
        if not path.is_file():
            raise ArtifactError(f"{name} is missing")
        if not _inside(model_dir, path):
            raise ArtifactError(f"{name} links outside the model folder")
        paths[name] = path
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
                path = source / safe_relative(name)
                if not path.is_file():
                    raise ArtifactError(f"{name} is missing from {source}")
                if not _inside(source, path):
                    raise ArtifactError(f"{name} links outside the model folder")
                _copy_file(path, staging / name, link)
        else:
            raise ArtifactError(f"{source} does not exist")
        return _finish(staging, target, manifest, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def hub_download(repo: str, revision: str, local_dir: Path, allow_patterns, endpoint) -> None:
    """huggingface_hub's snapshot download, imported only when used."""
    from huggingface_hub import snapshot_download

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
    downloader: Callable[..., None] = hub_download,
    progress: Progress = _noop,
) -> FetchResult:
    """Download ``repo`` at the pinned ``revision`` (40 hex) and verify it.
    ``url_guard`` refuses an endpoint (a mirror) the platform may not reach."""
    if len(revision) != 40 or any(c not in "0123456789abcdef" for c in revision):
        raise ArtifactError("the revision must be pinned to a 40-character commit hash")
    if endpoint and url_guard is not None:
        url_guard(endpoint)
    manifest = dict(manifest or {})
    for name in manifest:
        safe_relative(name)
    target = Path(target)
    staging = _staging(target)
    try:
        downloader(repo, revision, staging, sorted(manifest) or None, endpoint)
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        return _finish(staging, target, manifest, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
