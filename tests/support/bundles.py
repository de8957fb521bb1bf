"""Building Pacifica bundles for tests, including the published ingest fixtures."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from typing import Any

FOO = b"foo\n"
BAR = b"bar\n"
JAPANESE_NAME = "パソコン資産管理台帳（S&T HK）_現地調達PC.xls"  # noqa: RUF001 - the published fixture name


def sha1(data: bytes) -> str:
    """Hex sha1."""
    return hashlib.sha1(data).hexdigest()


def good_metadata() -> list[dict[str, Any]]:
    """The published ingest test metadata (good-md.json), with its three subdir variants."""
    stamp = "Tue Nov 29 14:09:05 PST 2016"
    files = [
        ("foo.txt", "data/a/b/", FOO),
        ("bar.txt", "data//a/b", BAR),
        (JAPANESE_NAME, "data/a/c", FOO),
    ]
    entries: list[dict[str, Any]] = [
        {"destinationTable": "Transactions.submitter", "value": 10},
        {"destinationTable": "Transactions.project", "value": "1234a"},
        {"destinationTable": "Transactions.instrument", "value": 54},
        {"destinationTable": "TransactionKeyValue", "key": "Temp C", "value": "27"},
        {"destinationTable": "TransactionKeyValue", "key": "Tag", "value": "foo"},
    ]
    for name, subdir, data in files:
        entries.append(
            {
                "destinationTable": "Files",
                "name": name,
                "subdir": subdir,
                "size": len(data),
                "hashtype": "sha1",
                "hashsum": sha1(data),
                "mimetype": "text/plain",
                "ctime": stamp,
                "mtime": stamp,
            }
        )
    return entries


GOOD_MEMBERS = {
    "data/a/b/foo.txt": FOO,
    "data/a/b/bar.txt": BAR,
    f"data/a/c/{JAPANESE_NAME}": FOO,
}


def variant(kind: str) -> list[dict[str, Any]]:
    """The published bad variants: ``bad-project``, ``bad-mimetype``, ``bad-hashsum``."""
    entries = copy.deepcopy(good_metadata())
    if kind == "bad-project":
        entries[1]["value"] = "12"
    elif kind == "bad-mimetype":
        entries[5]["mimetype"] = "lame-mime-type"
    elif kind == "bad-hashsum":
        entries[5]["hashsum"] = "deadbeef"
    else:
        raise ValueError(kind)
    return entries


def make_tar(
    members: dict[str, bytes],
    metadata: bytes | list[dict[str, Any]] | None,
    *,
    metadata_first: bool = True,
    directories: tuple[str, ...] = ("data", "data/a", "data/a/b", "data/a/c"),
) -> bytes:
    """A plain tar with ``metadata.txt`` first (as ``tar -cf x.tar metadata.txt data``) or last."""
    buffer = io.BytesIO()
    document = json.dumps(metadata).encode() if isinstance(metadata, list) else metadata
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if document is not None and metadata_first:
            _add(tar, "metadata.txt", document)
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members.items():
            _add(tar, name, data)
        if document is not None and not metadata_first:
            _add(tar, "metadata.txt", document)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1480457345
    tar.addfile(info, io.BytesIO(data))


def good_tar(metadata_first: bool = True) -> bytes:
    """The published good.tar."""
    return make_tar(GOOD_MEMBERS, good_metadata(), metadata_first=metadata_first)


def move_metadata(sources: dict[str, bytes], subdir: str = "data/a/b/") -> list[dict[str, Any]]:
    """Move metadata naming each source path (already written by the caller) and its bytes."""
    entries: list[dict[str, Any]] = [
        {"destinationTable": "Transactions.submitter", "value": 10},
        {"destinationTable": "Transactions.project", "value": "1234a"},
        {"destinationTable": "Transactions.instrument", "value": 54},
    ]
    for path, data in sources.items():
        entries.append(
            {
                "destinationTable": "Files",
                "name": path.rsplit("/", 1)[-1],
                "subdir": subdir,
                "size": len(data),
                "hashtype": "sha1",
                "hashsum": sha1(data),
                "mimetype": "text/plain",
                "source": path,
            }
        )
    return entries


# pacifica/pacifica-cli:travis/uploader.json, the configuration its own CI uploads with.
UPLOADER_JSON: list[dict[str, Any]] = [
    {
        "destinationTable": "Transactions.submitter",
        "displayFormat": "{_id} - {first_name} {last_name}",
        "displayTitle": "Currently Logged On",
        "displayType": "logged_on",
        "metaID": "logon",
        "queryDependency": {},
        "queryFields": ["first_name", "last_name", "_id"],
        "sourceTable": "users",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "Transactions.project",
        "displayFormat": "{_id} - {title}",
        "displayTitle": "Project ID",
        "displayType": "select",
        "metaID": "project",
        "queryDependency": {"instrument_id": "instrument"},
        "queryFields": ["_id", "title"],
        "sourceTable": "projects",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "Transactions.instrument",
        "displayFormat": "{_id} {name_short} - {display_name}",
        "displayTitle": "Instrument ID",
        "displayType": "select",
        "metaID": "instrument",
        "queryDependency": {},
        "queryFields": ["_id", "name_short", "display_name"],
        "sourceTable": "instruments",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "TransactionKeyValue",
        "displayFormat": "{_id} - {first_name} {last_name}",
        "displayTitle": "User ID the data is for",
        "displayType": "select",
        "key": "User of Record",
        "metaID": "user-of-record",
        "queryDependency": {"project_id": "project"},
        "queryFields": ["first_name", "last_name", "_id"],
        "sourceTable": "users",
        "value": "",
        "valueField": "_id",
    },
    {
        "destinationTable": "NothingReally",
        "directoryOrder": 0,
        "displayFormat": "Project ID {_id}",
        "displayType": "directoryTree",
        "metaID": "directory-project",
        "queryDependency": {"_id": "project"},
        "queryFields": ["_id"],
        "sourceTable": "projects",
        "value": "",
        "valueField": "_id",
    },
]
