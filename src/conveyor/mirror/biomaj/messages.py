"""BioMAJ's download messages (package ``biomaj.download``, proto2), wire-compatible.

The classes are built at import from descriptors written here (no generated code, no
protoc), following ``biomaj_download/message/downmessage.proto`` of biomaj-download 3.2.12:
``File`` (with ``MetaData``), ``FileList``, ``Operation`` (``OPERATION``, ``Trace``),
``Process`` and ``DownloadFile`` (``Protocol``, ``Param``, ``HttpParse`` with the Apache
defaults, ``HTTP_METHOD``, ``RemoteFile``, ``Proxy`` and the ``options`` map).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from conveyor.mirror.listings import APACHE_RULES

PACKAGE = "biomaj.download"
Field = descriptor_pb2.FieldDescriptorProto
OPTIONAL = Field.LABEL_OPTIONAL
REQUIRED = Field.LABEL_REQUIRED
REPEATED = Field.LABEL_REPEATED
STRING = Field.TYPE_STRING
INT32 = Field.TYPE_INT32
INT64 = Field.TYPE_INT64
MESSAGE = Field.TYPE_MESSAGE
ENUM = Field.TYPE_ENUM

PROTOCOLS = (
    "FTP",
    "FTPS",
    "HTTP",
    "HTTPS",
    "DIRECTFTP",
    "DIRECTHTTP",
    "DIRECTHTTPS",
    "LOCAL",
    "RSYNC",
    "IRODS",
    "DIRECTFTPS",
)
DOWNLOAD = 1


def _add(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    label: int = OPTIONAL,
    type_name: str | None = None,
    default: str | None = None,
) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name is not None:
        field.type_name = f".{PACKAGE}.{type_name}"
    if default is not None:
        field.default_value = default


def _enum(parent: Any, name: str, values: tuple[str, ...]) -> None:
    enum = parent.enum_type.add(name=name)
    for number, value in enumerate(values):
        enum.value.add(name=value, number=number)


def _file(proto: descriptor_pb2.FileDescriptorProto) -> None:
    file = proto.message_type.add(name="File")
    _add(file, "name", 1, STRING, REQUIRED)
    _add(file, "root", 2, STRING)
    _add(file, "save_as", 3, STRING)
    _add(file, "url", 4, STRING)
    meta = file.nested_type.add(name="MetaData")
    for number, (name, kind) in enumerate(
        (
            ("permissions", STRING),
            ("group", STRING),
            ("size", INT64),
            ("hash", STRING),
            ("year", INT32),
            ("month", INT32),
            ("day", INT32),
            ("format", STRING),
            ("md5", STRING),
            ("download_time", INT64),
        ),
        start=1,
    ):
        _add(meta, name, number, kind)
    _add(file, "metadata", 5, MESSAGE, type_name="File.MetaData")
    file_list = proto.message_type.add(name="FileList")
    _add(file_list, "files", 1, MESSAGE, REPEATED, "File")


def _operation(proto: descriptor_pb2.FileDescriptorProto) -> None:
    operation = proto.message_type.add(name="Operation")
    _enum(operation, "OPERATION", ("LIST", "DOWNLOAD", "PROCESS"))
    _add(operation, "type", 1, ENUM, REQUIRED, "Operation.OPERATION")
    _add(operation, "download", 2, MESSAGE, type_name="DownloadFile")
    _add(operation, "process", 3, MESSAGE, type_name="Process")
    trace = operation.nested_type.add(name="Trace")
    _add(trace, "trace_id", 1, STRING, REQUIRED)
    _add(trace, "span_id", 2, STRING, REQUIRED)
    _add(operation, "trace", 4, MESSAGE, type_name="Operation.Trace")
    process = proto.message_type.add(name="Process")
    _add(process, "exec", 1, STRING, REQUIRED)


def _download_file(proto: descriptor_pb2.FileDescriptorProto) -> None:
    download = proto.message_type.add(name="DownloadFile")
    _add(download, "bank", 1, STRING, REQUIRED)
    _add(download, "session", 2, STRING, REQUIRED)
    _add(download, "local_dir", 3, STRING, REQUIRED)
    _add(download, "timeout_download", 4, INT32)
    _enum(download, "Protocol", PROTOCOLS)
    param = download.nested_type.add(name="Param")
    _add(param, "name", 1, STRING, REQUIRED)
    _add(param, "value", 2, STRING, REQUIRED)
    parse = download.nested_type.add(name="HttpParse")
    _add(parse, "dir_line", 1, STRING, REQUIRED, default=APACHE_RULES.dir_line)
    _add(parse, "file_line", 2, STRING, REQUIRED, default=APACHE_RULES.file_line)
    for number, name, value in ((3, "dir_name", 1), (4, "dir_date", 2), (5, "file_name", 1)):
        _add(parse, name, number, INT32, REQUIRED, default=str(value))
    _add(parse, "file_date", 6, INT32, REQUIRED, default="2")
    _add(parse, "file_date_format", 7, STRING)
    _add(parse, "file_size", 8, INT32, REQUIRED, default="3")
    _enum(download, "HTTP_METHOD", ("GET", "POST"))
    remote = download.nested_type.add(name="RemoteFile")
    _add(remote, "files", 1, MESSAGE, REPEATED, "File")
    _add(remote, "protocol", 2, ENUM, REQUIRED, "DownloadFile.Protocol")
    _add(remote, "server", 3, STRING, REQUIRED)
    _add(remote, "remote_dir", 4, STRING, REQUIRED)
    _add(remote, "save_as", 5, STRING)
    _add(remote, "param", 6, MESSAGE, REPEATED, "DownloadFile.Param")
    _add(remote, "http_parse", 7, MESSAGE, type_name="DownloadFile.HttpParse")
    _add(remote, "credentials", 8, STRING)
    _add(remote, "matches", 9, STRING, REPEATED)
    _add(download, "remote_file", 5, MESSAGE, REQUIRED, "DownloadFile.RemoteFile")
    proxy = download.nested_type.add(name="Proxy")
    _add(proxy, "proxy", 1, STRING, REQUIRED)
    _add(proxy, "proxy_auth", 2, STRING)
    _add(download, "proxy", 6, MESSAGE, type_name="DownloadFile.Proxy")
    _add(download, "http_method", 8, ENUM, type_name="DownloadFile.HTTP_METHOD", default="GET")
    entry = download.nested_type.add(name="OptionsEntry")
    entry.options.map_entry = True
    _add(entry, "key", 1, STRING)
    _add(entry, "value", 2, STRING)
    _add(download, "options", 9, MESSAGE, REPEATED, "DownloadFile.OptionsEntry")


def _build() -> dict[str, Any]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="conveyor/biomaj_download.proto", package=PACKAGE, syntax="proto2"
    )
    _file(proto)
    _operation(proto)
    _download_file(proto)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in ("File", "FileList", "Operation", "Process", "DownloadFile")
    }


_CLASSES = _build()
Operation: Any = _CLASSES["Operation"]
DownloadFile: Any = _CLASSES["DownloadFile"]
FileList: Any = _CLASSES["FileList"]
