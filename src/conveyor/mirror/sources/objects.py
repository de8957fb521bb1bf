"""Object stores through fsspec: ``s3`` (bucket in ``server``) and ``gs``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import fsspec
from fsspec.asyn import sync

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.sources.base import READ_CHUNK, Source, register
from conveyor.mirror.spec import SourceSpec
from conveyor.storage.stores import fsspec_options

LIST_BATCH = 1000


@register
class ObjectStoreSource(Source):
    """Keys under ``remote_dir`` in bucket ``server``; folders are key prefixes."""

    protocols = ("s3", "gs")

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(spec)
        options = fsspec_options(spec.protocol, spec.storage_options.items())
        if spec.credentials is not None:
            secret = spec.credentials.secret()
            if spec.protocol == "s3":
                options.update(key=spec.credentials.user, secret=secret)
            else:
                options.update(token=secret)
        options.setdefault("skip_instance_cache", True)
        self.fs: Any = fsspec.filesystem(spec.protocol, **options)

    def object_path(self, path: str) -> str:
        """``bucket/prefix/path``."""
        return f"{self.spec.server.strip('/')}{self.remote_path(path)}".rstrip("/")

    def list(self, folder: str = "") -> Iterator[RemoteEntry]:
        """One page at a time where the store's fsspec driver can (s3fs, gcsfs), else one
        call."""
        where = self.object_path(folder)
        items: Iterator[dict[str, Any]]
        if hasattr(self.fs, "_iterdir"):
            items = self._paged(where)
        elif hasattr(self.fs, "_call_list_objects"):
            items = self._gcs_pages(where)
        else:
            items = iter(self._guard(lambda: self.fs.ls(where, detail=True), where))
        seen = False
        for item in items:
            seen = True
            name = str(item["name"]).rstrip("/").rsplit("/", 1)[-1]
            yield _entry(name, item)
        if not seen and not self._guard(lambda: self.fs.isdir(where), where):
            raise SourceError(f"{self.spec.protocol}://{where}: no such folder", permanent=True)

    def read(self, path: str, offset: int = 0) -> Iterator[bytes]:
        """The object from ``offset``, in chunks."""
        where = self.object_path(path)
        handle = self._guard(lambda: self.fs.open(where, "rb", block_size=READ_CHUNK), where)
        try:
            with handle:
                handle.seek(offset)
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
        except OSError as error:
            raise SourceError(f"{self.spec.protocol}://{where}: {error}") from None

    def stat(self, path: str) -> RemoteEntry:
        """The object's size, time and ETag."""
        where = self.object_path(path)
        info = self._guard(lambda: self.fs.info(where), where)
        return _entry(where.rsplit("/", 1)[-1], info)

    def _paged(self, where: str) -> Iterator[dict[str, Any]]:
        # s3fs lists through an async generator on its own loop; pulling a batch per call
        # keeps memory to one batch whatever the size of the folder.
        bucket, _, key = where.partition("/")
        pages: AsyncIterator[dict[str, Any]] = self.fs._iterdir(
            bucket, prefix=f"{key}/" if key else ""
        )

        async def batch() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            async for item in pages:
                found.append(item)
                if len(found) >= LIST_BATCH:
                    break
            return found

        while found := self._guard(lambda: sync(self.fs.loop, batch), where):
            yield from found

    def _gcs_pages(self, where: str) -> Iterator[dict[str, Any]]:
        # gcsfs gathers every page of a listing before it answers; asking for the pages
        # one by one through its own page call keeps memory to one page.
        bucket, _, key = where.partition("/")
        prefix = f"{key}/" if key else None
        token: str | None = None
        while True:
            page = self._guard(
                partial(
                    sync,
                    self.fs.loop,
                    self.fs._call_list_objects,
                    bucket,
                    delimiter="/",
                    prefix=prefix,
                    maxResults=LIST_BATCH,
                    pageToken=token,
                ),
                where,
            )
            for folder in page.get("prefixes", []):
                yield {"name": f"{bucket}/{folder}", "type": "directory", "size": 0}
            for item in page.get("items", []):
                if item.get("name") != prefix:  # the folder's own placeholder object
                    yield self.fs._process_object(bucket, item)
            token = page.get("nextPageToken")
            if not token:
                return

    def _guard(self, operation: Any, where: str) -> Any:
        try:
            return operation()
        except FileNotFoundError:
            raise SourceError(
                f"{self.spec.protocol}://{where}: no such object or folder", permanent=True
            ) from None
        except PermissionError as error:
            raise SourceError(f"{self.spec.protocol}://{where}: {error}", permanent=True) from None
        except OSError as error:
            raise SourceError(f"{self.spec.protocol}://{where}: {error}") from None


def _entry(name: str, info: dict[str, Any]) -> RemoteEntry:
    is_dir = info.get("type") == "directory"
    modified = info.get("LastModified") or info.get("updated") or info.get("mtime")
    mtime: datetime | None = None
    if isinstance(modified, datetime):
        mtime = modified.astimezone(UTC)
    elif isinstance(modified, str):
        mtime = datetime.fromisoformat(modified.replace("Z", "+00:00")).astimezone(UTC)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    size = info.get("size")
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir or size is None else int(size),
        mtime=mtime,
        fingerprint=str(etag).strip('"') if etag else None,
    )
