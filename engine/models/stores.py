"""Where model files live: local directories (read in place) and S3 prefixes (downloaded to a disk cache)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, NotRequired, Protocol, TypedDict

from engine.errors import ModelError
from engine.models.layout import FileEntry, VersionInfo, is_hidden

log = logging.getLogger("engine.models")


class S3Object(TypedDict):
    """The parts of an S3 object listing (list_objects_v2's Contents) that a store reads."""

    Key: str
    Size: int
    LastModified: datetime
    ETag: NotRequired[str]


class Store(Protocol):
    """Lists models and versions at a location and makes a version's files available on local disk."""

    keeps_copies: bool  # True when materialise() downloads, so that disk_cache_size applies

    def listing(self, location: str) -> tuple[list[FileEntry], bool] | None:
        """Every file under `location` and whether `location` is itself a file; None when nothing is there."""

    def subdirectories(self, location: str) -> list[str]:
        """The names of the visible directories directly under `location` (the models of `models.dir`)."""

    def materialise(self, version: VersionInfo) -> Path:
        """A local path holding the version's files."""

    def discard(self, version: VersionInfo) -> None:
        """Forget a local copy made by materialise (never touches the source)."""


def store_for(location: str, cache_root: Path) -> Store:
    """The store that can read `location`."""
    return S3Store(cache_root) if location.startswith("s3://") else LocalStore()


class LocalStore:
    """Models in a local directory: read and watched in place, never copied."""

    keeps_copies = False

    def listing(self, location: str) -> tuple[list[FileEntry], bool] | None:
        """Walk the directory (or stat the file); sub-directories are listed too, as "path/" entries."""
        root = Path(location)
        if root.is_file():
            stat = root.stat()
            return [FileEntry("", stat.st_size, stat.st_mtime, _inode(stat))], True
        if not root.is_dir():
            return None
        entries = []
        seen = {_identity(root)}  # symlinked directories are followed, each real directory once (no loops)
        for current, dirs, files in os.walk(root, followlinks=True):
            kept = []
            for name, is_dir in [(d, True) for d in dirs if not d.startswith(".")] + [(f, False) for f in files]:
                path = Path(current, name)
                try:
                    stat = path.stat()
                except OSError:  # removed while we walked, or a dangling link
                    continue
                relative = path.relative_to(root).as_posix()
                if not is_dir:
                    entries.append(FileEntry(relative, stat.st_size, stat.st_mtime, _inode(stat)))
                elif (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    kept.append(name)
                    entries.append(FileEntry(relative + "/", 0, stat.st_mtime))
            dirs[:] = kept
        return entries, False

    def subdirectories(self, location: str) -> list[str]:
        """Visible sub-directories."""
        root = Path(location)
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []

    def materialise(self, version: VersionInfo) -> Path:
        """The files are already local."""
        return Path(version.location)

    def discard(self, version: VersionInfo) -> None:
        """Local sources are never deleted."""


class S3Store:
    """Models under an s3://bucket/prefix, through boto3 (usual credential chain; AWS_ENDPOINT_URL honoured)."""

    keeps_copies = True

    def __init__(self, cache_root: Path) -> None:
        self.cache_root = cache_root
        self._client: Any = None  # boto3 ships no types

    @property
    def client(self) -> Any:
        """A boto3 S3 client; unsigned (public buckets) when no credentials are configured."""
        if self._client is None:
            try:
                self._client = s3_client()
            except ImportError:
                raise ModelError("s3:// model paths need boto3: pip install 'engine[s3]'") from None
        return self._client

    def listing(self, location: str) -> tuple[list[FileEntry], bool] | None:
        """List every object under the prefix (or the single object named by it)."""
        bucket, key = split_s3(location)
        objects = self._objects(bucket, key.rstrip("/"))
        exact = [o for o in objects if o["Key"] == key.rstrip("/")]
        if exact and key and not key.endswith("/"):
            return [_object_entry("", exact[0])], True
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        entries = []
        for obj in objects:
            if not obj["Key"].startswith(prefix) or obj["Key"].endswith("/"):
                continue  # a sibling sharing the prefix, or a "directory" marker object
            relative = obj["Key"][len(prefix):]
            if not is_safe_relative(relative):
                log.warning("ignoring s3://%s/%s: its key cannot be a local path", bucket, obj["Key"])
                continue
            entries.append(_object_entry(relative, obj))
        return (entries, False) if entries else None

    def subdirectories(self, location: str) -> list[str]:
        """Common prefixes one level below the prefix."""
        bucket, key = split_s3(location)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        names: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(name for name in names if name and not is_hidden(name))

    def materialise(self, version: VersionInfo) -> Path:
        """Download the version into the disk cache (once per content signature)."""
        target = self._cache_path(version)
        bucket, key = split_s3(version.location)
        single_file = PurePosixPath(key).name if version.files[0].path == "" else None
        if target.exists():
            return target / single_file if single_file else target
        self.cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_root))
        try:
            for entry in version.files:
                object_key = key if entry.path == "" else f"{key.rstrip('/')}/{entry.path}"
                relative = entry.path or single_file or ""
                if not is_safe_relative(relative):
                    raise ModelError(f"s3://{bucket}/{object_key}: its key cannot be a local path")
                local = staging / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, object_key, str(local))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target / single_file if single_file else target

    def discard(self, version: VersionInfo) -> None:
        """Delete the downloaded copy."""
        shutil.rmtree(self._cache_path(version), ignore_errors=True)

    def _cache_path(self, version: VersionInfo) -> Path:
        digest = hashlib.sha1(repr((version.location, version.signature)).encode()).hexdigest()[:20]
        return self.cache_root / digest

    def _objects(self, bucket: str, key: str) -> list[S3Object]:
        objects: list[S3Object] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            objects += page.get("Contents", [])
        return objects


def s3_client() -> Any:
    """A boto3 S3 client (usual credential chain, AWS_ENDPOINT_URL honoured; unsigned for public buckets when no
    credentials are configured); ImportError without boto3."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(signature_version=UNSIGNED) if session.get_credentials() is None else None
    return session.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=config)


def is_safe_relative(path: str) -> bool:
    """A relative path that stays where it is joined: no '', '.' or '..' component, no leading '/'."""
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _inode(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


def _object_entry(relative: str, obj: S3Object) -> FileEntry:
    """An S3 object; LastModified has whole seconds only, so its ETag tells same-second rewrites apart."""
    return FileEntry(relative, obj["Size"], obj["LastModified"].timestamp(), obj.get("ETag", "").strip('"'))


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def split_s3(location: str) -> tuple[str, str]:
    """s3://bucket/some/prefix → ("bucket", "some/prefix")."""
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key
