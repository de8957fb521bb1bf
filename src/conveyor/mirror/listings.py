"""Remote listings read into :class:`RemoteEntry` objects, streaming.

Three kinds of listing:

* FTP ``LIST`` lines, in the Unix ``ls -l`` and the MS-DOS (IIS) formats;
* FTP ``MLSD`` lines (RFC 3659);
* HTTP directory index pages: Apache (fancy ``<pre>`` and table), nginx autoindex, IIS,
  lighttpd and plain ``<li>`` lists (Python's ``http.server``), recognised automatically;
  or any page, with BioMAJ's ``http.parse.*`` regular expressions.

Everything streams: lines and page chunks are read one at a time and entries are yielded as
they are found, so memory does not grow with the size of a folder.

Times: MLSD times are UTC by the RFC. ``LIST`` lines and index pages do not say which time
zone they use (servers print their local time; nginx prints UTC unless told otherwise): we
assume UTC.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import DefinitionError, ListingFormatError

__all__ = [
    "APACHE_RULES",
    "MAX_RECORD_CHARS",
    "HttpParseRules",
    "parse_index",
    "parse_list",
    "parse_list_line",
    "parse_mlsd",
    "parse_mlsd_line",
]

#: The longest index page record (a line, or the text between two ``<br>``) read.
MAX_RECORD_CHARS = 1024 * 1024

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}


# --- shared ---------------------------------------------------------------------------------


def _fingerprint(text: str) -> str:
    """BioMAJ's change fingerprint: the md5 of what the listing says about an entry."""
    data = text.encode("utf-8", "surrogatepass")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _quoted(text: str) -> str:
    """``text`` for an error message: at most 200 characters of it."""
    return repr(text[:200])


def _month(text: str) -> int:
    """A month number from ``1``, ``01`` or an English name (``Jan``, ``Sept``, ``June``)."""
    number = int(text) if text.isdigit() else _MONTHS.get(text[:3].lower(), 0)
    if not 1 <= number <= 12:
        raise ListingFormatError(f"not a month: {_quoted(text)}")
    return number


def _hour24(hour: str, am_pm: str | None) -> int:
    """The hour on a 24-hour clock, from a 12-hour one when ``am_pm`` is given."""
    value = int(hour)
    if am_pm is None:
        return value
    return value % 12 + (12 if am_pm.upper() == "PM" else 0)


def _moment(
    source: str,
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    """A UTC time; ListingFormatError naming ``source`` when the fields make no date."""
    try:
        return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)
    except ValueError as error:
        raise ListingFormatError(f"not a valid date ({error}): {_quoted(source)}") from None


def _skipped(name: str) -> bool:
    """Whether a listed name is the folder itself or its parent."""
    return name in ("", ".", "..")


# --- FTP LIST -------------------------------------------------------------------------------

_TOTAL = re.compile(r"total\s+\S*", re.IGNORECASE)
_UNIX_SPECIAL = re.compile(r"[bcps][-rwxsStTlL]{9}")  # devices, pipes, sockets: not data
_UNIX_LINE = re.compile(
    r"(?P<kind>[-dl])[-rwxsStTlL]{9}[+.@]?\s+"
    # Links, owner and group: servers print all three, two of them or none.
    r"(?:.*?\s)?(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+"
    r"(?:(?P<hour>\d{1,2}):(?P<minute>\d{2})|(?P<year>\d{4})) "
    r"(?P<name>.+)"
)
_DOS_LINE = re.compile(
    r"(?P<month>\d{2})-(?P<day>\d{2})-(?P<year>\d{2}|\d{4})\s+"
    r"(?P<hour>\d{1,2}):(?P<minute>\d{2})\s*(?P<am_pm>[AP]M)?\s+"
    r"(?P<size><DIR>|\d+)\s+(?P<name>.+)",
    re.IGNORECASE,
)
# ls shows the time of day instead of the year for recent dates; a date up to a day ahead of
# now (clock skew, time zones) is taken to be this year's, a later one last year's.
_FUTURE_GRACE = timedelta(days=1)


def parse_list_line(line: str, *, now: datetime) -> RemoteEntry | None:
    """The entry an FTP ``LIST`` line describes, in the Unix or the MS-DOS format.

    ``None`` for lines that describe no mirrored entry: blank lines, ``total``, ``.``, ``..``,
    devices, pipes and sockets. A symbolic link is an entry with ``is_link`` set, ``is_dir``
    unset and no size: what it points to is unknown, the caller decides. A year-less Unix date
    gets the year that does not put it in the future of ``now``. Times are taken to be UTC.
    ``fingerprint`` is the md5 of the line. Raises ListingFormatError for a line in no format
    we know.
    """
    line = line.rstrip("\r\n")
    if not line.strip() or _TOTAL.fullmatch(line) or _UNIX_SPECIAL.match(line):
        return None
    if unix := _UNIX_LINE.fullmatch(line):
        return _unix_entry(unix, line, _as_utc(now))
    if dos := _DOS_LINE.fullmatch(line):
        return _dos_entry(dos, line)
    raise ListingFormatError(f"not an FTP LIST line in a format we know: {_quoted(line)}")


def parse_list(lines: Iterable[str], *, now: datetime) -> Iterator[RemoteEntry]:
    """The entries of an FTP ``LIST`` listing, one line at a time (see parse_list_line)."""
    for line in lines:
        if (entry := parse_list_line(line, now=now)) is not None:
            yield entry


def _unix_entry(match: re.Match[str], line: str, now: datetime) -> RemoteEntry | None:
    """The entry of a Unix ``ls -l`` line."""
    kind, name = match["kind"], match["name"]
    if kind == "l":
        name = name.split(" -> ", 1)[0]
    if _skipped(name):
        return None
    # A folder's size is that of its own index, not of its content: not worth reporting.
    size = int(match["size"]) if kind == "-" else None
    return RemoteEntry(
        name,
        is_dir=kind == "d",
        size=size,
        mtime=_unix_time(match, line, now),
        fingerprint=_fingerprint(line),
        is_link=kind == "l",
    )


def _unix_time(match: re.Match[str], line: str, now: datetime) -> datetime:
    """The time of a Unix ``ls -l`` line, with the year guessed when it shows none."""
    month, day = _month(match["month"]), int(match["day"])
    if match["year"]:
        return _moment(line, int(match["year"]), month, day)
    hour, minute = int(match["hour"]), int(match["minute"])
    try:
        this_year: datetime | None = datetime(now.year, month, day, hour, minute, tzinfo=UTC)
    except ValueError:  # Feb 29 outside a leap year: from an earlier year
        this_year = None
    if this_year is not None and this_year <= now + _FUTURE_GRACE:
        return this_year
    return _moment(line, now.year - 1, month, day, hour, minute)


def _dos_entry(match: re.Match[str], line: str) -> RemoteEntry | None:
    """The entry of an MS-DOS (IIS) listing line."""
    name = match["name"]
    if _skipped(name):
        return None
    year = int(match["year"])
    if year < 100:
        year += 2000 if year < 70 else 1900
    is_dir = match["size"].upper() == "<DIR>"
    hour = _hour24(match["hour"], match["am_pm"])
    mtime = _moment(line, year, int(match["month"]), int(match["day"]), hour, int(match["minute"]))
    return RemoteEntry(
        name,
        is_dir=is_dir,
        size=None if is_dir else int(match["size"]),
        mtime=mtime,
        fingerprint=_fingerprint(line),
    )


# --- FTP MLSD -------------------------------------------------------------------------------

_MLSD_TIME = re.compile(r"(?P<whole>\d{14})(?:\.(?P<fraction>\d+))?")


def parse_mlsd_line(line: str) -> RemoteEntry | None:
    """The entry an FTP ``MLSD`` line (RFC 3659: ``fact=value;...; name``) describes.

    Facts are case-insensitive; ``type``, ``size`` and ``modify`` are read, others ignored.
    ``None`` for blank lines, the folder itself and its parent (``cdir``, ``pdir``) and types
    that are no data (devices...). ``type=OS.unix=slink:...`` is a link (see parse_list_line).
    ``fingerprint`` is the md5 of the line. Raises ListingFormatError for a malformed line.
    """
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    facts_text, space, name = line.partition(" ")
    if not space or not name:
        raise ListingFormatError(f"not an MLSD line (no name after the facts): {_quoted(line)}")
    facts = _mlsd_facts(facts_text, line)
    # No type fact is allowed by the RFC; what is listed is then most likely a plain file.
    kind = facts.get("type", "file").lower()
    is_link = kind.startswith(("os.unix=slink", "os.unix=symlink"))
    if _skipped(name) or not (is_link or kind in ("file", "dir")):
        return None
    size = facts.get("size") if kind == "file" else None
    modify = facts.get("modify")
    return RemoteEntry(
        name,
        is_dir=kind == "dir",
        size=None if size is None else _mlsd_size(size, line),
        mtime=None if modify is None else _mlsd_time(modify, line),
        fingerprint=_fingerprint(line),
        is_link=is_link,
    )


def parse_mlsd(lines: Iterable[str]) -> Iterator[RemoteEntry]:
    """The entries of an FTP ``MLSD`` listing, one line at a time (see parse_mlsd_line)."""
    for line in lines:
        if (entry := parse_mlsd_line(line)) is not None:
            yield entry


def _mlsd_facts(text: str, line: str) -> dict[str, str]:
    """The facts of an MLSD line, by lower-case name."""
    facts = {}
    for fact in filter(None, text.split(";")):
        name, equals, value = fact.partition("=")
        if not equals:
            raise ListingFormatError(f"not an MLSD fact: {fact[:200]!r} in {_quoted(line)}")
        facts[name.lower()] = value
    return facts


def _mlsd_size(text: str, line: str) -> int:
    """An MLSD ``size`` fact."""
    if not text.isdigit():
        raise ListingFormatError(f"not an MLSD size: {text[:200]!r} in {_quoted(line)}")
    return int(text)


def _mlsd_time(text: str, line: str) -> datetime:
    """An MLSD ``modify`` fact: ``YYYYMMDDHHMMSS[.fraction]``, UTC."""
    match = _MLSD_TIME.fullmatch(text)
    if match is None:
        raise ListingFormatError(f"not an MLSD time: {text[:200]!r} in {_quoted(line)}")
    whole = match["whole"]
    month, day, hour, minute, second = (int(whole[at : at + 2]) for at in range(4, 14, 2))
    microsecond = int((match["fraction"] or "")[:6].ljust(6, "0"))
    return _moment(line, int(whole[:4]), month, day, hour, minute, second, microsecond)


# --- HTTP index pages -----------------------------------------------------------------------


@dataclass(frozen=True)
class HttpParseRules:
    """BioMAJ's ``http.parse.*`` settings: how to find folders and files in an index page.

    ``dir_line`` and ``file_line`` are regular expressions; the other numbers are their
    1-based groups holding a name, a date or a size. A date group of ``-1`` means the page
    gives no date: the listing time is used. A size group of ``-1`` means it gives no size:
    the size is 0, as in BioMAJ. ``file_date_format`` is a ``strptime`` format (``%%`` is read
    as ``%``, as configparser files write it); without it dates read as ``DD-Mon-YYYY
    [HH:MM]``. Raises DefinitionError for an invalid expression or group number.
    """

    dir_line: str
    file_line: str
    dir_name: int = 1
    dir_date: int = 2
    file_name: int = 1
    file_date: int = 2
    file_size: int = 3
    file_date_format: str | None = None

    def __post_init__(self) -> None:
        dir_groups = _group_count(self.dir_line, "dir.line")
        file_groups = _group_count(self.file_line, "file.line")
        _check_group("dir.name", self.dir_name, dir_groups, may_lack=False)
        _check_group("dir.date", self.dir_date, dir_groups, may_lack=True)
        _check_group("file.name", self.file_name, file_groups, may_lack=False)
        _check_group("file.date", self.file_date, file_groups, may_lack=True)
        _check_group("file.size", self.file_size, file_groups, may_lack=True)


def _group_count(pattern: str, setting: str) -> int:
    """How many groups the regular expression of ``http.parse.<setting>`` has."""
    try:
        return re.compile(pattern).groups
    except re.error as error:
        raise DefinitionError(
            f"http.parse.{setting} is not a regular expression: {error}"
        ) from None


def _check_group(setting: str, number: int, groups: int, *, may_lack: bool) -> None:
    """Reject a group number its expression does not have (``-1``: none, where allowed)."""
    if not (1 <= number <= groups or (may_lack and number == -1)):
        allowed = f"-1 or 1 to {groups}" if may_lack else f"1 to {groups}"
        raise DefinitionError(f"http.group.{setting} is {number}: its expression allows {allowed}")


#: BioMAJ's default ``http.parse.*`` settings, for Apache ``<pre>`` indexes.
APACHE_RULES = HttpParseRules(
    dir_line=(
        r'<img[\s]+src="[\S]+"[\s]+alt="\[DIR\]"[\s]*/?>[\s]*<a[\s]+href="([\S]+)/"[\s]*>.*'
        r"([\d]{2}-[\w\d]{2,5}-[\d]{4}\s[\d]{2}:[\d]{2})"
    ),
    file_line=(
        r'<img[\s]+src="[\S]+"[\s]+alt="\[[\s]+\]"[\s]*/?>[\s]<a[\s]+href="([\S]+)".*'
        r"([\d]{2}-[\w\d]{2,5}-[\d]{4}\s[\d]{2}:[\d]{2})[\s]+([\d\.]+[MKG]{0,1})"
    ),
)

_RECORD_END = re.compile(r"\n|<br ?/?>", re.IGNORECASE)
_CUT_RECORD_END = re.compile(r"<(?:b(?:r ?/?)?)?", re.IGNORECASE)  # "<br />" cut short

_DATE_TEXT = r"\d{1,2}-[A-Za-z]{3}-\d{4}|\d{4}-(?:\d{2}|[A-Za-z]{3})-\d{2}"
_CELL_GAP = r"(?:\s|</?td[^<>]*>)"
# A link's start. Tags and attributes end at the next "<" or ">" (valid HTML escapes them), so
# a line of unclosed tags is not scanned to its end from each of them.
_HREF = r'<a\s[^<>]*?href\s*=\s*"(?P<href>[^"<>]*)"'
# Apache (both forms), nginx and lighttpd: a link, then a date, then a size ("-" for folders).
_LINK_DATE_SIZE = re.compile(
    # The link text ends at its "</a>", or the next link when none: no scan to the line's end.
    rf"{_HREF}[^<>]*>[^<]*(?:<(?!/a>|a\s)[^<]*)*</a>(?:{_CELL_GAP}|/)*"
    rf"(?P<date>(?:{_DATE_TEXT})(?:\s+\d{{1,2}}:\d{{2}}(?::\d{{2}})?)?){_CELL_GAP}+"
    r"(?P<size>[\d.]+[KMGTPE]?|-)(?=\s|<|$)",
    re.IGNORECASE,
)
# IIS: a date, a size or "<dir>", then a link; the whole listing on one line, "<br>" between.
_DATE_SIZE_LINK = re.compile(
    # Names bounded in length: a long run of letters is not tried from each of its letters.
    r"(?P<date>(?:[A-Za-z]{3,9},\s+[A-Za-z]{3,9}\s+\d{1,2},\s+\d{4}|\d{1,2}/\d{1,2}/\d{4})"
    r"\s+\d{1,2}:\d{2}(?:\s*[AP]M)?)\s+"
    rf"(?P<size>\d+|&lt;dir&gt;|<dir>)\s+{_HREF}",
    re.IGNORECASE,
)
# Python's http.server and other plain lists: names only.
_LIST_ITEM = re.compile(rf"<li>\s*{_HREF}", re.IGNORECASE)
_PAGE_FORMATS = (_LINK_DATE_SIZE, _DATE_SIZE_LINK, _LIST_ITEM)
_IIS_DIR = ("<dir>", "&lt;dir&gt;")

_CLOCK = (
    r"(?:\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"(?:\s*(?P<am_pm>[AP]M))?)?"
)
_DATE_SHAPES = tuple(
    re.compile(rf"\s*{day}{_CLOCK}\s*", re.IGNORECASE)
    for day in (
        # 03-Jan-2024: nginx, Apache 2.2, BioMAJ's default
        r"(?P<day>\d{1,2})-(?P<month>[A-Za-z\d]{1,9})-(?P<year>\d{4})",
        # 2024-01-03: Apache 2.4; 2024-Jan-03: lighttpd
        r"(?P<year>\d{4})-(?P<month>[A-Za-z\d]{1,9})-(?P<day>\d{1,2})",
        # 1/3/2024: IIS
        r"(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})",
        # Wednesday, January 03, 2024: older IIS
        r"(?:[A-Za-z]{3,9},\s+)?(?P<month>[A-Za-z]{3,9})\s+(?P<day>\d{1,2}),\s+(?P<year>\d{4})",
    )
)

_SIZE = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[KMGTPE]?)(?:i?B)?", re.I)
_EXTERNAL = re.compile(r"[A-Za-z][A-Za-z\d+.-]*://|//|(?:mailto|javascript|data):", re.I)


def parse_index(
    chunks: Iterable[str],
    *,
    rules: HttpParseRules | None = None,
    now: datetime,
    base_path: str | None = None,
) -> Iterator[RemoteEntry]:
    """The entries of an HTTP directory index page, read from text chunks of any size.

    Without ``rules`` the page format is recognised from the first record (line) that is an
    entry of one we know, and kept for the rest of the page: Apache, nginx, lighttpd and IIS
    give names, dates and sizes; plain ``<li>`` lists (Python's http.server) names only. With
    ``rules`` BioMAJ's expressions find the entries; ``now`` is the time of entries whose date
    they do not give.

    Names come from the links, URL-decoded; a trailing ``/`` marks a folder. Links that are no
    entry of this folder are skipped: parent and sort links, links to other sites or deeper
    folders. An absolute link (IIS writes them) names an entry only when it is under
    ``base_path``, the folder's decoded URL path; without ``base_path`` absolute links are
    skipped. A size with a unit (``1.2M``) is approximate. Times are taken to be UTC.
    ``fingerprint`` is the md5 of name, date and size as the page shows them (BioMAJ's).
    Raises ListingFormatError for a record over MAX_RECORD_CHARS, or a date or size that
    cannot be read.
    """
    records = _records(chunks)
    if rules is None:
        return _recognised_entries(records, base_path)
    return _ruled_entries(records, rules, _as_utc(now), base_path)


class _Record:
    """The record being read: its pieces so far, joined once when it ends."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._length = 0

    def add(self, piece: str) -> None:
        """Add the next piece; ListingFormatError when the record grows too long."""
        self._length += len(piece)
        if self._length > MAX_RECORD_CHARS:
            raise ListingFormatError(
                f"index page record longer than {MAX_RECORD_CHARS} characters: not an index"
            )
        if piece:
            self._pieces.append(piece)

    def take(self) -> str:
        """The record, which is complete; start the next one."""
        text = "".join(self._pieces).removesuffix("\r")
        self._pieces.clear()
        self._length = 0
        return text


def _records(chunks: Iterable[str]) -> Iterator[str]:
    """The non-blank records of a page: its lines, cut at ``<br>`` too (IIS lists on one line).

    Holds one unfinished record at most.
    """
    record = _Record()
    carry = ""  # the start of a "<br>" cut by a chunk boundary, completed by the next chunk
    for chunk in chunks:
        text = carry + chunk
        split = _cut_record_end(text)
        text, carry = text[:split], text[split:]
        start = 0
        for end in _RECORD_END.finditer(text):
            record.add(text[start : end.start()])
            if line := record.take():
                yield line
            start = end.end()
        record.add(text[start:])
    record.add(carry)
    if line := record.take():
        yield line


def _cut_record_end(text: str) -> int:
    """Where a record end cut short by the end of ``text`` starts; ``len(text)`` if none."""
    start = text.rfind("<", max(0, len(text) - 5))  # a record end has one "<", at its start
    if start != -1 and _CUT_RECORD_END.fullmatch(text, start):
        return start
    return len(text)


def _recognised_entries(records: Iterable[str], base_path: str | None) -> Iterator[RemoteEntry]:
    """The entries of a page in a format we recognise."""
    page_format: re.Pattern[str] | None = None
    for record in records:
        page_format, matches = _recognise(record, page_format)
        for match in matches:
            if (entry := _recognised_entry(match, base_path)) is not None:
                yield entry


def _recognise(
    record: str, page_format: re.Pattern[str] | None
) -> tuple[re.Pattern[str] | None, list[re.Match[str]]]:
    """The page's format, known or recognised in this record, and the record's entries.

    Once known, the format is kept: links of other shapes (a README's list) are no entries.
    """
    for candidate in _PAGE_FORMATS if page_format is None else (page_format,):
        matches = list(candidate.finditer(record))
        if matches:
            return candidate, matches
    return page_format, []


def _recognised_entry(match: re.Match[str], base_path: str | None) -> RemoteEntry | None:
    """The entry of one match of a recognised format."""
    found = _entry_name(match["href"], base_path)
    if found is None:
        return None
    name, is_dir = found
    fields = match.groupdict()
    date_text, size_text = fields.get("date") or "", fields.get("size") or ""
    is_dir = is_dir or size_text.lower() in _IIS_DIR
    mtime = _http_date(date_text) if date_text else None
    return _http_entry(name, is_dir, mtime, date_text, size_text)


def _ruled_entries(
    records: Iterable[str], rules: HttpParseRules, now: datetime, base_path: str | None
) -> Iterator[RemoteEntry]:
    """The entries BioMAJ's expressions find in a page."""
    # BioMAJ runs findall on the whole page; we run the expressions on one record at a time so
    # pages stream. Index pages list one entry a line, and "." in BioMAJ's expressions does
    # not cross lines anyway.
    dir_line, file_line = re.compile(rules.dir_line), re.compile(rules.file_line)
    for record in records:
        for match in dir_line.finditer(record):
            if (entry := _ruled_dir(match, rules, now, base_path)) is not None:
                yield entry
        for match in file_line.finditer(record):
            if (entry := _ruled_file(match, rules, now, base_path)) is not None:
                yield entry


def _ruled_dir(
    match: re.Match[str], rules: HttpParseRules, now: datetime, base_path: str | None
) -> RemoteEntry | None:
    """The folder entry of one match of ``rules.dir_line``."""
    found = _entry_name(_group(match, rules.dir_name), base_path)
    if found is None:
        return None
    date_text = _group(match, rules.dir_date)
    mtime = _http_date(date_text) if date_text else now
    return _http_entry(found[0], True, mtime, date_text, "")


def _ruled_file(
    match: re.Match[str], rules: HttpParseRules, now: datetime, base_path: str | None
) -> RemoteEntry | None:
    """The file entry of one match of ``rules.file_line``."""
    found = _entry_name(_group(match, rules.file_name), base_path)
    if found is None:
        return None
    date_text = _group(match, rules.file_date)
    mtime = _ruled_date(date_text, rules.file_date_format) if date_text else now
    # BioMAJ reads a missing size group as 0; unknown is what it is, and the transfer tells.
    return _http_entry(found[0], False, mtime, date_text, _group(match, rules.file_size))


def _group(match: re.Match[str], number: int) -> str:
    """Group ``number`` of ``match``; empty for ``-1`` or a group that did not match."""
    return "" if number == -1 else match.group(number) or ""


def _ruled_date(text: str, date_format: str | None) -> datetime:
    """A file date read with ``http.parse.file.date.format``, or as ``DD-Mon-YYYY [HH:MM]``."""
    if date_format is None:
        return _http_date(text)
    try:
        return _as_utc(datetime.strptime(text.strip(), date_format.replace("%%", "%")))
    except ValueError as error:
        raise ListingFormatError(f"not a date as configured ({error}): {_quoted(text)}") from None


def _http_entry(
    name: str, is_dir: bool, mtime: datetime | None, date_text: str, size_text: str
) -> RemoteEntry:
    """An index page entry from what the page shows."""
    size, approximate = (None, None) if is_dir else _size(size_text)
    fingerprint = _fingerprint(name + date_text + size_text)
    return RemoteEntry(name, is_dir, size, mtime, approximate, fingerprint)


def _entry_name(href: str, base_path: str | None) -> tuple[str, bool] | None:
    """The name a link gives to an entry of the listed folder, and whether it is a folder.

    ``None`` for links that are no entry of the folder.
    """
    url = html.unescape(href)  # attribute text: "&amp;" is "&"
    path = url.split("#", 1)[0].split("?", 1)[0]
    if _EXTERNAL.match(path):
        return None
    path = unquote(path)
    if path.startswith("/"):
        path = _under(path, base_path)
    path = path.removeprefix("./")  # how Apache writes names with a colon
    name = path.removesuffix("/")
    if _skipped(name) or "/" in name:
        return None
    return name, path.endswith("/")


def _under(path: str, base_path: str | None) -> str:
    """The rest of an absolute ``path`` under ``base_path``; empty when not under it."""
    if base_path is None:
        return ""
    folder = base_path.strip("/")
    prefix = f"/{folder}/" if folder else "/"
    return path.removeprefix(prefix) if path.startswith(prefix) else ""


def _http_date(text: str) -> datetime:
    """A date as index pages show them (see _DATE_SHAPES), UTC."""
    for shape in _DATE_SHAPES:
        if match := shape.fullmatch(text):
            return _moment(
                text,
                int(match["year"]),
                _month(match["month"]),
                int(match["day"]),
                _hour24(match["hour"] or "0", match["am_pm"]),
                int(match["minute"] or 0),
                int(match["second"] or 0),
            )
    raise ListingFormatError(f"not a date we know: {_quoted(text)}")


def _size(text: str) -> tuple[int | None, int | None]:
    """A shown size: ``(exact, None)`` for a byte count, ``(None, approximate)`` with a unit.

    Units are binary (1K is 1024 bytes), as Apache, nginx and lighttpd compute them. BioMAJ
    reads them as decimal (humanfriendly), a few percent off.
    """
    text = text.strip()
    if text in ("", "-"):
        return None, None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ListingFormatError(f"not a size: {_quoted(text)}")
    number, unit = match["number"], match["unit"].upper()
    if not unit and number.isdigit():
        return int(number), None
    power = "KMGTPE".index(unit) + 1 if unit else 0
    return None, round(float(number) * 1024**power)
