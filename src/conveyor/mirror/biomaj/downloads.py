"""Doing what one BioMAJ ``Operation`` asks: download its files into its ``local_dir``.

Each file goes through the mirror's transfer machinery (temporary name, resume, stall
detection, retries under the message's ``stop_condition``/``wait_policy``, archive checks),
so a BioMAJ installation gets those by switching its download service to Conveyor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor.ingest.paths import UnsafePath, relative_parts
from conveyor.mirror.biomaj.messages import PROTOCOLS
from conveyor.mirror.errors import DefinitionError, MirrorError, unwritable
from conveyor.mirror.gate import HostGate
from conveyor.mirror.properties import options_from_map
from conveyor.mirror.retry import retry_policy
from conveyor.mirror.sources import Source, open_source
from conveyor.mirror.sources.base import join_remote
from conveyor.mirror.spec import Credentials, SourceSpec
from conveyor.mirror.transfer import Wanted, fetch

DEFAULT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class FileResult:
    """One file of an operation: where it went, how big, how long, or why it failed."""

    name: str
    host: str
    size: int = 0
    seconds: float = 0.0
    error: str = ""


SourceOpener = Callable[[SourceSpec], Source]


def download_operation(
    download: Any,
    *,
    gates: dict[str, HostGate],
    threads: int,
    open_spec: SourceOpener = open_source,
) -> list[FileResult]:
    """Download every file of a ``DownloadFile`` message; one result per file."""
    try:
        spec, stop, wait = source_spec(download)
        policy = retry_policy(stop, wait)
    except DefinitionError as error:
        return [FileResult(file.name, "", error=str(error)) for file in download.remote_file.files]
    gate = gates.setdefault(f"{spec.protocol}://{spec.server}", HostGate(threads))
    timeout = float(download.timeout_download) if download.timeout_download else DEFAULT_TIMEOUT
    results = []
    with open_spec(spec) as source:
        for file in download.remote_file.files:
            results.append(_one(source, spec, download, file, policy, gate, timeout))
    return results


def source_spec(download: Any) -> tuple[SourceSpec, str | None, str | None]:
    """The source a message names, and its retry strings. Raises DefinitionError."""
    remote = download.remote_file
    protocol = PROTOCOLS[remote.protocol].lower()
    if protocol == "irods":
        raise DefinitionError("iRODS downloads are not supported by Conveyor")
    options, stop, wait = options_from_map(dict(download.options))
    proxy = download.proxy if download.HasField("proxy") else None
    try:
        spec = SourceSpec(
            protocol=protocol,
            server=remote.server,
            remote_dir="/",
            credentials=Credentials.parse(remote.credentials) if remote.credentials else None,
            proxy=proxy.proxy if proxy else None,
            proxy_auth=Credentials.parse(proxy.proxy_auth) if proxy and proxy.proxy_auth else None,
            method="POST" if download.http_method == 1 else "GET",
            params={param.name: param.value for param in remote.param},
            options=options,
        )
    except ValueError as error:
        raise DefinitionError(f"{protocol}://{remote.server}: {error}") from None
    return spec, stop, wait


def _one(
    source: Source,
    spec: SourceSpec,
    download: Any,
    file: Any,
    policy: Any,
    gate: HostGate,
    timeout: float,
) -> FileResult:
    remote_dir = file.root or download.remote_file.remote_dir
    started = time.monotonic()
    try:
        path = join_remote(remote_dir, file.name)
        target = _target(Path(download.local_dir), file.save_as or file.name)
        size = file.metadata.size if file.metadata.HasField("size") else None
        fetched = fetch(
            source,
            Wanted(path, file.name, size, target),
            policy,
            gate=gate,
            attempt_seconds=timeout,
            check_archives=not spec.options.skip_check_uncompress,
        )
    except MirrorError as error:
        return FileResult(file.name, spec.host, error=f"{file.name}: {error}")
    except OSError as error:
        return FileResult(file.name, spec.host, error=f"{file.name}: {unwritable(error)}")
    _set_remote_date(target, file.metadata)
    return FileResult(file.name, spec.host, fetched.size, time.monotonic() - started)


def _target(local_dir: Path, save_as: str) -> Path:
    try:
        parts = relative_parts(save_as)
    except UnsafePath as error:
        raise DefinitionError(f"save_as {error}") from None
    if not parts:
        raise DefinitionError(f"save_as {save_as!r} names no file")
    return local_dir.joinpath(*parts)


def _set_remote_date(target: Path, metadata: Any) -> None:
    # BioMAJ stamps a download with the remote date (day precision, midnight local time),
    # which its reuse of unchanged files compares.
    if metadata.year and metadata.month and metadata.day:
        try:
            stamp = datetime(metadata.year, metadata.month, metadata.day).timestamp()
            os.utime(target, (stamp, stamp))
        except (ValueError, OverflowError, OSError):
            return  # an impossible date in a message leaves the download's own time
