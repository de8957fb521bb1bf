"""BioMAJ bank ``.properties`` files, read as :class:`MirrorDefinition` objects.

A bank file is an INI file whose ``[GENERAL]`` section holds the keys of BioMAJ's bank
configuration (reference A2, A3, A9). It is read as BioMAJ reads it: configparser's default
interpolation (``%%`` is a ``%``, ``%(key)s`` the value of another key), each key looked up
first in the environment as ``BIOMAJ_<KEY>`` (dots as underscores, upper case), then in the
file; an empty value is no value, and a key left unset keeps the default of the definition
(which holds BioMAJ's). Keys a mirror does not need (``data.dir``, processes, ...) are ignored,
so whole BioMAJ bank files load as they are.

Where BioMAJ would fail late or silently, we refuse the file at once and say which key is
wrong and why; the few places where we deliberately differ from BioMAJ are commented.
"""

from __future__ import annotations

import configparser
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from conveyor.mirror.definition import MirrorDefinition, describe
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.listings import APACHE_RULES, HttpParseRules
from conveyor.mirror.retry import parse_stop, parse_wait
from conveyor.mirror.spec import DIRECT_PROTOCOLS, Credentials, SourceOptions

SECTION = "GENERAL"

# BioMAJ's config check refuses sftp in bank files although its downloader supports it; we
# accept it, as every protocol we support should be reachable from a bank file.
FOLDER_PROTOCOLS = ("ftp", "ftps", "http", "https", "sftp", "local", "rsync", "s3", "gs")
PROTOCOLS = (*FOLDER_PROTOCOLS, *DIRECT_PROTOCOLS, "multi")
REFUSED_PROTOCOLS = {
    "none": "protocol none downloads nothing, and a mirror is made of downloaded files",
    "irods": "protocol irods is not supported",
}
# The plain protocols a ``remote.file.N.protocol`` may name, and the direct form they mean.
DIRECT_FORMS = {
    "ftp": "directftp",
    "ftps": "directftps",
    "http": "directhttp",
    "https": "directhttps",
}

# BioMAJ writes these regexps with doubled backslashes and halves them when it reads the file.
UNESCAPED_KEYS = ("remote.files", "local.files", "http.parse.dir.line", "http.parse.file.line")

RETRY_OPTIONS = ("stop_condition", "wait_policy")
BOOLEAN_OPTIONS = (
    "ssl_verifyhost",
    "ssl_verifypeer",
    "allow_redirections",
    "skip_check_uncompress",
)
KNOWN_OPTIONS = (*SourceOptions.model_fields, *RETRY_OPTIONS)
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")

HTTP_LINES = {"http.parse.dir.line": "dir_line", "http.parse.file.line": "file_line"}
HTTP_GROUPS = {
    "http.group.dir.name": "dir_name",
    "http.group.dir.date": "dir_date",
    "http.group.file.name": "file_name",
    "http.group.file.date": "file_date",
    "http.group.file.size": "file_size",
}
HTTP_DATE_FORMAT = "http.group.file.date_format"

_MULTI_KEY = re.compile(r"^remote\.file\.(\d+)\.")

_Number = TypeVar("_Number", int, float)


def load_properties(
    path: Path, *, name: str | None = None, environ: Mapping[str, str] | None = None
) -> MirrorDefinition:
    """The mirror a BioMAJ bank file describes.

    ``name`` replaces the bank's ``db.name``; ``environ`` (``os.environ`` by default) holds
    the ``BIOMAJ_*`` overrides. Raises :class:`DefinitionError` naming the file, the key and
    the reason when the file cannot be read or is not a valid bank.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DefinitionError(f"{path}: cannot read the bank file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise DefinitionError(f"{path}: the bank file is not UTF-8 text") from None
    return definition_from_properties(text, name=name, environ=environ, source_name=str(path))


def definition_from_properties(
    text: str,
    *,
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
    source_name: str = "<bank>",
) -> MirrorDefinition:
    """The mirror the bank file ``text`` describes (see :func:`load_properties`).

    ``source_name`` says where ``text`` comes from, at the start of every error message.
    """
    bank = _read_bank(text, os.environ if environ is None else environ, source_name)
    data = _definition_data(bank, name)
    try:
        return MirrorDefinition.model_validate(data)
    except ValidationError as error:
        raise DefinitionError(f"{source_name}: {describe(error)}") from None


@dataclass(frozen=True)
class _Bank:
    """The ``[GENERAL]`` keys of one bank file, looked up as BioMAJ looks them up."""

    section: configparser.SectionProxy
    environ: Mapping[str, str]
    where: str

    def get(self, key: str) -> str | None:
        """``BIOMAJ_<KEY>`` from the environment, else the file's value; blank means None."""
        # As in BioMAJ, an empty variable overrides nothing, and a variable's value is taken
        # as it is (no interpolation, no halving of backslashes).
        value = self.environ.get("BIOMAJ_" + key.upper().replace(".", "_")) or self._in_file(key)
        return (value or "").strip() or None

    def file_keys(self) -> list[str]:
        """The keys the file sets."""
        return list(self.section)

    def error(self, key: str, why: str) -> DefinitionError:
        """An error about ``key``, naming the bank."""
        return DefinitionError(f"{self.where}: {key}: {why}")

    def _in_file(self, key: str) -> str | None:
        try:
            value = self.section.get(key)
        except configparser.InterpolationSyntaxError as error:
            raise self.error(key, f"{error.message} (write %% for a literal %)") from None
        except configparser.InterpolationError as error:
            raise self.error(key, error.message) from None
        if value is not None and key in UNESCAPED_KEYS:
            value = value.replace("\\\\", "\\")
        return value


class _CasePreservingParser(configparser.ConfigParser):
    """configparser with keys kept as written (BioMAJ's are lower case with dots)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _read_bank(text: str, environ: Mapping[str, str], where: str) -> _Bank:
    parser = _CasePreservingParser()
    try:
        parser.read_string(text, source=where)
    except configparser.MissingSectionHeaderError:
        raise DefinitionError(
            f"{where}: no [GENERAL] section: a bank file starts with [GENERAL]"
        ) from None
    except configparser.Error as error:
        message = error.message.replace("\n", " ")
        raise DefinitionError(f"{where}: not a bank file: {message}") from None
    if not parser.has_section(SECTION):
        raise DefinitionError(f"{where}: no [GENERAL] section, where a bank's keys are")
    return _Bank(parser[SECTION], environ, where)


def _definition_data(bank: _Bank, name: str | None) -> dict[str, Any]:
    protocol = _protocol(bank, "protocol")
    listed = _listed_options(bank, "")
    option_fields = _option_fields(bank, "", listed)
    options = _source_options(bank, "", option_fields)
    data: dict[str, Any] = {
        "name": _mirror_name(bank, name),
        "release": _release(bank, protocol, options),
        **_retry_fields(bank, listed),
        **_selection(bank),
        **_tuning(bank),
    }
    if protocol == "multi":
        data["files"] = _multi_files(bank, option_fields)
    elif protocol in DIRECT_PROTOCOLS:
        data["files"] = [_direct_file(bank, protocol, options)]
    else:
        data["source"] = _folder_source(bank, protocol, options)
    return data


def _mirror_name(bank: _Bank, name: str | None) -> str:
    chosen = name or bank.get("db.name")
    if not chosen:
        raise DefinitionError(f"{bank.where}: the bank has no db.name; pass --name")
    return chosen


def _protocol(bank: _Bank, key: str, default: str | None = None) -> str:
    protocol = (bank.get(key) or default or "").lower()
    if protocol in REFUSED_PROTOCOLS:
        raise bank.error(key, REFUSED_PROTOCOLS[protocol])
    if protocol not in PROTOCOLS:
        given = f"{protocol!r} is not supported" if protocol else "missing"
        raise bank.error(key, f"{given}; use one of {', '.join(PROTOCOLS)}")
    return protocol


def _selection(bank: _Bank) -> dict[str, Any]:
    """Which files a run takes and keeps: ``remote.files``, ``local.files``, ``remote.list``."""
    return _present(
        remote_files=_words(bank.get("remote.files")),
        local_files=_words(bank.get("local.files")),
        remote_list=bank.get("remote.list"),
    )


def _tuning(bank: _Bank) -> dict[str, Any]:
    return _present(
        timeout_download=_number(bank, "timeout.download", float),
        threads=_number(bank, "files.num.threads", int),
    )


# --- sources ----------------------------------------------------------------------------------


def _folder_source(bank: _Bank, protocol: str, options: SourceOptions) -> dict[str, Any]:
    """The folder a non-direct bank mirrors."""
    remote_dir = bank.get("remote.dir")
    return _present(
        protocol=protocol,
        server=_server(bank, "server", protocol, remote_dir),
        remote_dir=remote_dir,
        options=options,
        http_parse=_http_parse(bank),
        **_access(bank, bank.get("server.credentials")),
    )


def _direct_file(bank: _Bank, protocol: str, options: SourceOptions) -> dict[str, Any]:
    """The one file of a ``direct*`` bank, whose ``remote.dir`` is the path of that file."""
    folder, file_name = _split_file_path(bank, "remote.dir", protocol)
    source = _present(
        protocol=protocol,
        server=_server(bank, "server", protocol, None),
        remote_dir=folder,
        method=_method(bank, "url.method"),
        params=_params(bank, "url.params", lambda key: f"{key}.value"),
        options=options,
        **_access(bank, bank.get("server.credentials")),
    )
    return {"source": source, "path": file_name, "save_as": bank.get("target.name") or file_name}


def _multi_files(bank: _Bank, bank_options: dict[str, object]) -> list[dict[str, Any]]:
    """``remote.file.0.*``, ``remote.file.1.*``, ... up to the first number without a path."""
    files: list[dict[str, Any]] = []
    while bank.get(f"remote.file.{len(files)}.path") is not None:
        files.append(_multi_file(bank, len(files), bank_options))
    # BioMAJ silently drops the entries after a gap in the numbers; we refuse them.
    left_out = sorted(
        {int(match[1]) for key in bank.file_keys() if (match := _MULTI_KEY.match(key))}
        - set(range(len(files)))
    )
    if not files or left_out:
        why = "missing: protocol multi reads remote.file.0.*, remote.file.1.*, ... up to here"
        if left_out:
            why += f", so remote.file.{left_out[-1]}.* would be left out"
        raise bank.error(f"remote.file.{len(files)}.path", why)
    return files


def _multi_file(bank: _Bank, index: int, bank_options: dict[str, object]) -> dict[str, Any]:
    prefix = f"remote.file.{index}."
    protocol = _protocol(bank, prefix + "protocol")
    protocol = DIRECT_FORMS.get(protocol, protocol)
    if protocol not in DIRECT_PROTOCOLS:
        raise bank.error(
            prefix + "protocol",
            f"{protocol} cannot fetch one named file; use one of {', '.join(DIRECT_PROTOCOLS)}",
        )
    listed = _listed_options(bank, prefix)
    retry = [option for option in listed if option in RETRY_OPTIONS]
    if retry:
        raise bank.error(
            f"{prefix}options.{retry[0]}",
            "a mirror has one retry policy: set it in options.names and options.*",
        )
    # The bank's options apply to every file (BioMAJ ignores them with multi); a file's own
    # options take precedence.
    fields = {**bank_options, **_option_fields(bank, prefix, listed)}
    folder, file_name = _split_file_path(bank, prefix + "path", protocol)
    # BioMAJ means to fall back on server.credentials, but tests the method instead of the
    # credentials (so never does): we take the file's credentials, else the bank's.
    credentials = bank.get(prefix + "credentials") or bank.get("server.credentials")
    source = _present(
        protocol=protocol,
        server=_server(bank, prefix + "server", protocol, None, fallback="server"),
        remote_dir=folder,
        method=_method(bank, prefix + "method", fallback="url.method"),
        params=_params(bank, prefix + "params.keys", lambda key: f"{prefix}params.{key}"),
        options=_source_options(bank, prefix, fields),
        **_access(bank, credentials),
    )
    return {"source": source, "path": file_name, "save_as": bank.get(prefix + "name") or file_name}


def _server(
    bank: _Bank, key: str, protocol: str, remote_dir: str | None, fallback: str | None = None
) -> str:
    """The server, required unless the folder is on this machine (local, or rsync's local
    mode where ``remote.dir`` is the path and the server is empty)."""
    server = bank.get(key) or (bank.get(fallback) if fallback else None)
    if server:
        return server
    if protocol == "local" or (protocol == "rsync" and remote_dir):
        if not remote_dir:
            raise bank.error("remote.dir", "missing: protocol local needs the folder to mirror")
        return ""
    raise bank.error(key, f"missing: protocol {protocol} needs a server")


def _split_file_path(bank: _Bank, key: str, protocol: str) -> tuple[str, str]:
    """The folder and name of a direct file's path (BioMAJ strips a trailing ``/``)."""
    path = (bank.get(key) or "").rstrip("/")
    folder, file_name = posixpath.split(path)
    if not file_name:
        raise bank.error(key, f"must be the path of the file to fetch with protocol {protocol}")
    return folder or "/", file_name


def _access(bank: _Bank, credentials: str | None, prefix: str = "") -> dict[str, Any]:
    """Credentials, and the proxy settings (``prefix`` picks the ``release.*`` ones first)."""
    proxy_auth = bank.get(prefix + "proxy_auth") or bank.get("proxy_auth")
    return _present(
        credentials=Credentials.parse(credentials) if credentials else None,
        proxy=bank.get(prefix + "proxy") or bank.get("proxy"),
        proxy_auth=Credentials.parse(proxy_auth) if proxy_auth else None,
    )


def _method(bank: _Bank, key: str, fallback: str | None = None) -> str | None:
    if bank.get(key) is None and fallback:
        key = fallback
    method = (bank.get(key) or "").upper()
    if method not in ("", "GET", "POST"):
        raise bank.error(key, f"{method!r} is not GET or POST")
    return method or None


def _params(bank: _Bank, names_key: str, value_key: Callable[[str], str]) -> dict[str, str]:
    """Request parameters: the names ``names_key`` lists, each valued in its own key."""
    params = {}
    for name in _comma_list(bank.get(names_key)):
        value = bank.get(value_key(name))
        if value is None:
            raise bank.error(value_key(name), f"missing: {names_key} lists {name}")
        params[name] = value
    return params


def _http_parse(bank: _Bank) -> HttpParseRules | None:
    """Custom index-page rules, or None (recognise the index page) when no key sets any."""
    lines = {field: bank.get(key) for key, field in HTTP_LINES.items()}
    groups = {field: _number(bank, key, int) for key, field in HTTP_GROUPS.items()}
    date_format = bank.get(HTTP_DATE_FORMAT)
    if all(value is None for value in (*lines.values(), *groups.values(), date_format)):
        return None
    try:
        return HttpParseRules(
            dir_line=lines["dir_line"] or APACHE_RULES.dir_line,
            file_line=lines["file_line"] or APACHE_RULES.file_line,
            file_date_format=date_format,
            **{field: number for field, number in groups.items() if number is not None},
        )
    except DefinitionError as error:
        raise DefinitionError(f"{bank.where}: {error}") from None


# --- options ----------------------------------------------------------------------------------


def _listed_options(bank: _Bank, prefix: str) -> dict[str, str]:
    """The options ``<prefix>options.names`` lists, with their values.

    As in BioMAJ, an ``options.<x>`` key that the list does not name is not read.
    """
    names_key = f"{prefix}options.names"
    values = {}
    for option in _comma_list(bank.get(names_key)):
        if option not in KNOWN_OPTIONS:
            known = ", ".join(KNOWN_OPTIONS)
            raise bank.error(names_key, f"unknown option {option!r}; known options: {known}")
        key = f"{prefix}options.{option}"
        value = bank.get(key)
        if value is None:
            raise bank.error(key, f"missing: {names_key} lists {option}")
        values[option] = value
    return values


def _option_fields(bank: _Bank, prefix: str, listed: Mapping[str, str]) -> dict[str, object]:
    """The listed download options as :class:`SourceOptions` fields (retry ones left out)."""
    fields: dict[str, object] = {}
    for option, value in listed.items():
        if option in BOOLEAN_OPTIONS:
            fields[option] = _boolean(bank, f"{prefix}options.{option}", value)
        elif option not in RETRY_OPTIONS:
            fields[option] = value
    return fields


def _source_options(bank: _Bank, prefix: str, fields: Mapping[str, object]) -> SourceOptions:
    try:
        return SourceOptions.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{prefix}options.{problem['loc'][0]}: {problem['msg']}"
            for problem in error.errors(include_url=False, include_input=False)
        )
        raise DefinitionError(f"{bank.where}: {problems}") from None


def _retry_fields(bank: _Bank, listed: Mapping[str, str]) -> dict[str, str]:
    """``stop_condition`` and ``wait_policy``, checked here to name the key at fault."""
    fields = {}
    for option, parse in (("stop_condition", parse_stop), ("wait_policy", parse_wait)):
        if option in listed:
            try:
                parse(listed[option])
            except DefinitionError as error:
                raise bank.error(f"options.{option}", str(error)) from None
            fields[option] = listed[option]
    return fields


def _boolean(bank: _Bank, key: str, value: str) -> bool:
    try:
        return parse_boolean(value)
    except ValueError as error:
        raise bank.error(key, str(error)) from None


def parse_boolean(value: str) -> bool:
    """A BioMAJ boolean option, strictly.

    BioMAJ takes anything but 'true' and '1' as false, so that a typo such as
    ssl_verifypeer=ture silently turns checks off: we refuse what is not a boolean, and read
    'yes' and 'no' as meant (BioMAJ reads 'yes' as false).
    """
    word = value.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{value!r} is not a boolean: write true or false (or 1, 0, yes, no)")


def options_from_map(values: Mapping[str, str]) -> tuple[SourceOptions, str | None, str | None]:
    """Download options as a BioMAJ message carries them (the ``options`` map): the source
    options, the stop condition and the wait policy. Raises DefinitionError."""
    fields: dict[str, object] = {}
    for option, value in values.items():
        if option not in KNOWN_OPTIONS:
            known = ", ".join(sorted(KNOWN_OPTIONS))
            raise DefinitionError(f"unknown download option {option!r} (known: {known})")
        if option in BOOLEAN_OPTIONS:
            try:
                fields[option] = parse_boolean(value)
            except ValueError as error:
                raise DefinitionError(f"option {option}: {error}") from None
        elif option not in RETRY_OPTIONS:
            fields[option] = value
    try:
        options = SourceOptions.model_validate(fields)
    except ValidationError as error:
        raise DefinitionError(describe(error)) from None
    stop, wait = values.get("stop_condition"), values.get("wait_policy")
    if stop:
        parse_stop(stop)
    if wait:
        parse_wait(wait)
    return options, stop, wait


# --- release ----------------------------------------------------------------------------------


def _release(bank: _Bank, protocol: str, options: SourceOptions) -> dict[str, Any]:
    """``release.*``: how a run finds the release it downloads."""
    control = bank.get("release.control")
    return _present(
        file=bank.get("release.file"),
        regexp=bank.get("release.regexp"),
        format=bank.get("release.format"),
        control=_boolean(bank, "release.control", control) if control else None,
        source=_release_source(bank, protocol, options),
    )


def _release_source(bank: _Bank, protocol: str, options: SourceOptions) -> dict[str, Any] | None:
    """Where ``release.file`` is looked for when ``release.*`` keys move it elsewhere; the
    parts they do not set come from the bank's own source."""
    release_dir = bank.get("release.remote.dir")
    if not (bank.get("release.protocol") or bank.get("release.server") or release_dir):
        return None
    default = None if protocol == "multi" else protocol
    release_protocol = _protocol(bank, "release.protocol", default)
    if release_protocol == "multi":
        raise bank.error("release.protocol", "multi names files; the release needs a folder")
    folder = _release_folder(bank, protocol, release_protocol)
    direct = release_protocol in DIRECT_PROTOCOLS
    return _present(
        protocol=release_protocol,
        server=_server(bank, "release.server", release_protocol, folder, fallback="server"),
        remote_dir=folder,
        method=_method(bank, "release.url.method", fallback="url.method") if direct else None,
        params=_params(bank, "url.params", lambda key: f"{key}.value") if direct else None,
        options=options,
        http_parse=None if direct else _http_parse(bank),
        # BioMAJ assigns release.proxy_auth to the proxy (a typo); we use it as proxy_auth.
        **_access(
            bank,
            bank.get("release.credentials") or bank.get("server.credentials"),
            prefix="release.",
        ),
    )


def _release_folder(bank: _Bank, protocol: str, release_protocol: str) -> str | None:
    """The folder listed for ``release.file``.

    A ``direct*`` protocol's remote dir is the path of a file (BioMAJ reads that one file):
    we list the folder holding it, where ``release.file`` then selects the file.
    """
    key, written_for = "remote.dir", protocol
    if bank.get("release.remote.dir"):
        key, written_for = "release.remote.dir", release_protocol
    if written_for in DIRECT_PROTOCOLS:
        return _split_file_path(bank, key, written_for)[0]
    return bank.get(key)


# --- values -----------------------------------------------------------------------------------


def _number(bank: _Bank, key: str, kind: type[_Number]) -> _Number | None:
    value = bank.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise bank.error(key, f"{value!r} is not {noun}") from None


def _words(value: str | None) -> list[str] | None:
    return value.split() if value else None


def _comma_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _present(**values: Any) -> dict[str, Any]:
    """The values that are set: unset ones keep the definition's defaults."""
    return {key: value for key, value in values.items() if value is not None}
