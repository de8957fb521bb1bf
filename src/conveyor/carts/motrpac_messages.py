"""The MoTrPAC zipper's protobuf messages (package ``fdl_svc``, proto3), wire-compatible.

The message classes are built at import from descriptors written here, so no generated
code and no protoc step are needed:

    message FileDownloadMessage {
      message Requester { string email = 1; string name = 2; optional string id = 3; }
      message File { string object = 1; int64 object_size = 2; }
      Requester requester = 1;
      repeated File files = 2;
    }
    message UserNotificationMessage {
      message Requester { string email = 1; string name = 2; optional string id = 3; }
      Requester requester = 1;
      string zipfile = 2;
      repeated string files = 3;
    }
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PACKAGE = "fdl_svc"
Field = descriptor_pb2.FieldDescriptorProto


class BadMessage(ValueError):
    """Bytes that are not a usable FileDownloadMessage; the message says why."""


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    *,
    repeated: bool = False,
    type_name: str | None = None,
) -> descriptor_pb2.FieldDescriptorProto:
    label = Field.LABEL_REPEATED if repeated else Field.LABEL_OPTIONAL
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name is not None:
        field.type_name = f".{PACKAGE}.{type_name}"
    return field


def _add_requester(message: descriptor_pb2.DescriptorProto) -> None:
    requester = message.nested_type.add(name="Requester")
    _field(requester, "email", 1, Field.TYPE_STRING)
    _field(requester, "name", 2, Field.TYPE_STRING)
    # proto3 "optional": a synthetic one-field oneof, so an unset id is told from "".
    identifier = _field(requester, "id", 3, Field.TYPE_STRING)
    identifier.oneof_index = 0
    identifier.proto3_optional = True
    requester.oneof_decl.add(name="_id")
    _field(message, "requester", 1, Field.TYPE_MESSAGE, type_name=f"{message.name}.Requester")


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="conveyor/motrpac.proto", package=PACKAGE, syntax="proto3"
    )
    download = proto.message_type.add(name="FileDownloadMessage")
    _add_requester(download)
    file = download.nested_type.add(name="File")
    _field(file, "object", 1, Field.TYPE_STRING)
    _field(file, "object_size", 2, Field.TYPE_INT64)
    _field(
        download,
        "files",
        2,
        Field.TYPE_MESSAGE,
        repeated=True,
        type_name="FileDownloadMessage.File",
    )
    notification = proto.message_type.add(name="UserNotificationMessage")
    _add_requester(notification)
    _field(notification, "zipfile", 2, Field.TYPE_STRING)
    _field(notification, "files", 3, Field.TYPE_STRING, repeated=True)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
FileDownloadMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.FileDownloadMessage")
)
UserNotificationMessage: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.UserNotificationMessage")
)


@dataclass(frozen=True)
class Requester:
    """A person to tell when the zip is ready."""

    email: str
    name: str
    id: str | None = None


@dataclass(frozen=True)
class DownloadRequest:
    """A decoded FileDownloadMessage: who asks, and which objects (with their sizes)."""

    requester: Requester
    objects: tuple[tuple[str, int], ...]

    @property
    def file_hash(self) -> str:
        """The zipper's name for the request: md5 of the sorted object names, comma-joined."""
        names = ",".join(sorted(name for name, _size in self.objects))
        return hashlib.md5(names.encode(), usedforsecurity=False).hexdigest()

    @property
    def zipfile(self) -> str:
        """The zip's object name in the output store."""
        return f"{self.file_hash}.zip"


def decode_download(data: bytes) -> DownloadRequest:
    """The request in ``data``, or :class:`BadMessage` saying what is wrong with it."""
    message = FileDownloadMessage()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise BadMessage(f"not a FileDownloadMessage: {exc}") from None
    if not message.HasField("requester") or not message.requester.email:
        raise BadMessage("the FileDownloadMessage names no requester email")
    if not message.files:
        raise BadMessage("the FileDownloadMessage names no files")
    requester = message.requester
    return DownloadRequest(
        Requester(
            requester.email,
            requester.name,
            requester.id if requester.HasField("id") else None,
        ),
        tuple((file.object, int(file.object_size)) for file in message.files),
    )


def encode_download(request: DownloadRequest) -> bytes:
    """The FileDownloadMessage bytes of ``request`` (for clients and tests)."""
    message = FileDownloadMessage()
    _fill_requester(message.requester, request.requester)
    for name, size in request.objects:
        message.files.add(object=name, object_size=size)
    return bytes(message.SerializeToString())


def encode_notification(requester: Requester, zipfile: str, files: list[str]) -> bytes:
    """The UserNotificationMessage telling ``requester`` that ``zipfile`` is ready."""
    message = UserNotificationMessage(zipfile=zipfile, files=files)
    _fill_requester(message.requester, requester)
    return bytes(message.SerializeToString())


def decode_notification(data: bytes) -> tuple[Requester, str, list[str]]:
    """Requester, zip name and files of a UserNotificationMessage (for receivers and tests)."""
    message = UserNotificationMessage()
    message.ParseFromString(data)
    requester = message.requester
    return (
        Requester(
            requester.email, requester.name, requester.id if requester.HasField("id") else None
        ),
        message.zipfile,
        list(message.files),
    )


def _fill_requester(target: Any, requester: Requester) -> None:
    target.email = requester.email
    target.name = requester.name
    if requester.id is not None:
        target.id = requester.id
