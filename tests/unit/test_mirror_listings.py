"""Remote listings read into entries: FTP LIST and MLSD lines, HTTP index pages."""

from __future__ import annotations

import hashlib
import itertools
import tracemalloc
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import DefinitionError, ListingFormatError
from conveyor.mirror.listings import (
    APACHE_RULES,
    MAX_RECORD_CHARS,
    HttpParseRules,
    parse_index,
    parse_list,
    parse_list_line,
    parse_mlsd,
    parse_mlsd_line,
)

PAGES = Path(__file__).parent / "listings"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

Summary = tuple[str, bool, int | None, int | None, datetime | None]


def _page(name: str) -> str:
    """A fixture page, its line ends as stored (IIS's are CRLF)."""
    with (PAGES / name).open(encoding="utf-8", newline="") as page:
        return page.read()


def _summary(entries: Iterable[RemoteEntry]) -> list[Summary]:
    """Name, folder or not, exact size, approximate size, time of each entry."""
    return [(e.name, e.is_dir, e.size, e.approximate_size, e.mtime) for e in entries]


def _at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --- FTP LIST -------------------------------------------------------------------------------


def test_unix_list_lines() -> None:
    line = "-rw-r--r--   1 ftp      ftp          1234 Jan 03 10:22 name with spaces.gz"
    entry = parse_list_line(line + "\r\n", now=NOW)
    assert entry == RemoteEntry(
        "name with spaces.gz", size=1234, mtime=_at(2024, 1, 3, 10, 22), fingerprint=_md5(line)
    )
    folder = parse_list_line("drwxr-xr-x    2 0     0      4096 Mar  5  2019 dir", now=NOW)
    assert folder is not None
    assert (folder.name, folder.is_dir, folder.size, folder.mtime) == (
        "dir",
        True,
        None,
        _at(2019, 3, 5),
    )
    acl = parse_list_line("-rw-r--r--+ 1 1000 1000 7 Feb 29 2020 leap", now=NOW)
    assert acl is not None and (acl.size, acl.mtime) == (7, _at(2020, 2, 29))


def test_unix_symlinks_are_links_not_folders() -> None:
    entry = parse_list_line("lrwxrwxrwx    1 0   0     7 Jan  1  2020 link -> target", now=NOW)
    assert entry is not None
    assert (entry.name, entry.is_link, entry.is_dir, entry.size) == ("link", True, False, None)


@pytest.mark.parametrize(
    ("line", "name", "size"),
    [
        ("-rw-r--r-- 1 owner 42 Feb 10  2021 eight.txt", "eight.txt", 42),  # no group
        ("-rw-r--r-- 1 500 42 Feb 10  2021 numeric", "numeric", 42),  # numeric owner, no group
        ("-rw-r--r-- owner group 42 Feb 10  2021 no links", "no links", 42),
        ("-rw-r--r-- 1 a b 42 Feb 10  2021 5 Jan 1 2020 x", "5 Jan 1 2020 x", 42),
    ],
)
def test_unix_lines_with_fewer_columns(line: str, name: str, size: int) -> None:
    entry = parse_list_line(line, now=NOW)
    assert entry is not None and (entry.name, entry.size) == (name, size)
    assert entry.mtime == _at(2021, 2, 10)


def test_year_less_dates_never_land_in_the_future() -> None:
    now = datetime(2024, 1, 2, 12, 0, tzinfo=UTC)
    lines = [
        "-rw-r--r-- 1 ftp ftp 1 Dec 30 10:00 last-year",
        "-rw-r--r-- 1 ftp ftp 1 Jan  2 09:00 today",
        "-rw-r--r-- 1 ftp ftp 1 Jan  3 08:00 clock-skew",  # within a day ahead: this year
        "-rw-r--r-- 1 ftp ftp 1 Jan  4 08:00 beyond-skew",
    ]
    assert [entry.mtime for entry in parse_list(lines, now=now)] == [
        _at(2023, 12, 30, 10, 0),
        _at(2024, 1, 2, 9, 0),
        _at(2024, 1, 3, 8, 0),
        _at(2023, 1, 4, 8, 0),
    ]
    leap = parse_list_line("-rw-r--r-- 1 ftp ftp 1 Feb 29 10:00 leap", now=_at(2025, 1, 10))
    assert leap is not None and leap.mtime == _at(2024, 2, 29, 10, 0)


def test_lines_that_are_no_entries() -> None:
    lines = [
        "total 123",
        "",
        "   ",
        "drwxr-xr-x 2 0 0 4096 Mar 5 2019 .",
        "drwxr-xr-x 2 0 0 4096 Mar 5 2019 ..",
        "crw-rw-rw- 1 0 0 1, 3 Jan 1 2020 null",
        "brw-rw---- 1 0 6 8, 0 Jan 1 2020 sda",
        "prw-r--r-- 1 0 0 0 Jan 1 2020 fifo",
        "01-03-24  10:22AM       <DIR>          .",
    ]
    assert [parse_list_line(line, now=NOW) for line in lines] == [None] * len(lines)


def test_ms_dos_lines() -> None:
    lines = [
        "01-03-24  10:22AM       <DIR>          folder",
        "01-03-2024  10:22PM                 1234 file with spaces.txt",
        "12-31-99  12:05AM                    5 old.txt",
        "06-15-2023  17:45                    9 no-am-pm.txt",
    ]
    assert _summary(parse_list(lines, now=NOW)) == [
        ("folder", True, None, None, _at(2024, 1, 3, 10, 22)),
        ("file with spaces.txt", False, 1234, None, _at(2024, 1, 3, 22, 22)),
        ("old.txt", False, 5, None, _at(1999, 12, 31, 0, 5)),
        ("no-am-pm.txt", False, 9, None, _at(2023, 6, 15, 17, 45)),
    ]
    entry = parse_list_line(lines[1], now=NOW)
    assert entry is not None and entry.fingerprint == _md5(lines[1])


def test_unknown_lines_raise_with_the_line() -> None:
    with pytest.raises(ListingFormatError, match="garbage here"):
        parse_list_line("garbage here", now=NOW)
    with pytest.raises(ListingFormatError) as caught:
        parse_list_line("x" * 1000, now=NOW)
    assert "x" * 200 in str(caught.value) and "x" * 201 not in str(caught.value)
    with pytest.raises(ListingFormatError, match="not a valid date"):
        parse_list_line("-rw-r--r-- 1 ftp ftp 1 Feb 30 2020 bad-date", now=NOW)


# --- FTP MLSD -------------------------------------------------------------------------------


def test_mlsd_lines() -> None:
    line = "type=file;size=1234;modify=20240103102233;perm=r; name with spaces.gz"
    assert parse_mlsd_line(line + "\r\n") == RemoteEntry(
        "name with spaces.gz",
        size=1234,
        mtime=_at(2024, 1, 3, 10, 22, 33),
        fingerprint=_md5(line),
    )
    lines = [
        "type=cdir;modify=20240103102233; .",
        "type=pdir;modify=20240103102233; ..",
        "Type=Dir;Modify=20240103102233;UNIX.mode=0755; sub",
        "TYPE=FILE;SIZE=5;MODIFY=20240103102233.123; fraction",
        "type=OS.unix=slink:/pub/target;size=9;modify=20240103102233; link",
        "type=OS.unix=blkdev;modify=20240103102233; sda",
        "size=3; no-type",
        "",
    ]
    assert _summary(parse_mlsd(lines)) == [
        ("sub", True, None, None, _at(2024, 1, 3, 10, 22, 33)),
        ("fraction", False, 5, None, _at(2024, 1, 3, 10, 22, 33).replace(microsecond=123_000)),
        ("link", False, None, None, _at(2024, 1, 3, 10, 22, 33)),
        ("no-type", False, 3, None, None),
    ]
    link = parse_mlsd_line(lines[4])
    assert link is not None and link.is_link


@pytest.mark.parametrize(
    "line",
    ["type=file;size=1;no-name", "type=file;size=big; x", "type=file;modify=2024; x", "oops; x"],
)
def test_malformed_mlsd_lines_raise(line: str) -> None:
    with pytest.raises(ListingFormatError):
        parse_mlsd_line(line)


# --- HTTP index pages: recognised formats ---------------------------------------------------


def test_apache_fancy_index() -> None:
    entries = list(parse_index([_page("apache_fancy.html")], now=NOW))
    assert _summary(entries) == [
        ("sub", True, None, None, _at(2024, 1, 3, 10, 22)),
        ("file1.gz", False, None, 1229, _at(2024, 1, 3, 10, 22)),  # 1.2K, binary units
        ("small.txt", False, 123, None, _at(2023, 12, 31, 23, 59)),
        ("name with spaces & more.dat", False, None, 3_670_016, _at(2023, 12, 31, 23, 59)),
        (
            "a_very_long_file_name_apache_cuts_short.tar.gz",
            False,
            None,
            2**31,
            _at(2022, 6, 15, 8, 5),
        ),
    ]
    assert entries[1].fingerprint == _md5("file1.gz" + "2024-01-03 10:22" + "1.2K")


def test_apache_table_index() -> None:
    assert _summary(parse_index([_page("apache_table.html")], now=NOW)) == [
        ("sub", True, None, None, _at(2024, 1, 3, 10, 22)),
        ("file1.gz", False, None, 1229, _at(2024, 1, 3, 10, 22)),
        ("small.txt", False, 123, None, _at(2023, 12, 31, 23, 59)),
    ]


def test_nginx_index_takes_names_from_links_not_truncated_text() -> None:
    assert _summary(parse_index([_page("nginx.html")], now=NOW)) == [
        ("sub dir", True, None, None, _at(2024, 1, 3, 10, 22)),
        (
            "a_very_long_file_name_that_nginx_truncates_in_the_link_text.tar.gz",
            False,
            1_234_567,
            None,
            _at(2024, 1, 3, 10, 22),
        ),
        ("file.gz", False, 567, None, _at(2023, 2, 15, 8, 5)),
    ]


def test_iis_index_needs_the_listed_path_for_its_absolute_links() -> None:
    page = _page("iis.html")
    assert _summary(parse_index([page], now=NOW, base_path="/pub")) == [
        ("sub", True, None, None, _at(2024, 1, 3, 10, 22)),
        ("file.gz", False, 1234, None, _at(2024, 1, 3, 22, 22)),
        ("name x.txt", False, 5, None, _at(2023, 12, 31, 0, 5)),
        # /elsewhere/file.gz is not in /pub: skipped
    ]
    assert list(parse_index([page], now=NOW)) == []  # where absolute links point is unknown


def test_lighttpd_index() -> None:
    assert _summary(parse_index([_page("lighttpd.html")], now=NOW)) == [
        ("sub", True, None, None, _at(2024, 1, 3, 10, 22, 33)),
        ("file.gz", False, None, 1229, _at(2024, 1, 3, 10, 22, 33)),
    ]


def test_python_http_server_list_gives_names_only() -> None:
    assert _summary(parse_index([_page("python_http_server.html")], now=NOW)) == [
        ("café & more.txt", False, None, None, None),
        ("file.gz", False, None, None, None),
        ("sub", True, None, None, None),
    ]


def test_links_that_are_no_entries_are_skipped() -> None:
    links = [
        "../",
        "..",
        "./",
        "/",
        "%2E%2E/",
        "..%2F",
        "a/../b",
        "sub/deeper.gz",
        "/other/file.gz",
        "/pub/sub/deeper.gz",
        "/pubx/file.gz",
        "http://elsewhere.org/pub/file.gz",
        "//elsewhere.org/pub/file.gz",
        "mailto:admin@example.org",
        "?C=N;O=D",
        "#top",
        "./a:b.gz",
        "plain.gz?download=1#x",
        "/pub/absolute.gz",
        "sub%2Fname.gz",
    ]
    page = "".join(f'<li><a href="{href}">x</a></li>\n' for href in links)
    names = [entry.name for entry in parse_index([page], now=NOW, base_path="/pub/")]
    assert names == ["a:b.gz", "plain.gz", "absolute.gz"]


def test_the_page_format_is_kept_once_recognised() -> None:
    page = _page("nginx.html").replace(
        "</pre>", '</pre><ul><li><a href="readme-link.html">README</a></li></ul>'
    )
    assert "readme-link.html" not in [entry.name for entry in parse_index([page], now=NOW)]


def test_unreadable_sizes_and_dates_raise() -> None:
    with pytest.raises(ListingFormatError, match="not a month"):
        list(parse_index(['<a href="f">f</a> 03-Foo-2024 10:22 12\n'], now=NOW))
    with pytest.raises(ListingFormatError, match="not a valid date"):
        list(parse_index(['<a href="f">f</a> 2024-02-30 10:22 12\n'], now=NOW))


# --- HTTP index pages: BioMAJ's http.parse rules --------------------------------------------


def test_biomaj_default_rules_on_an_apache_pre_page() -> None:
    entries = list(parse_index([_page("apache_biomaj.html")], rules=APACHE_RULES, now=NOW))
    assert _summary(entries) == [
        ("current_release", True, None, None, _at(2024, 1, 3, 10, 22)),
        ("previous_releases", True, None, None, _at(2023, 12, 15, 9, 0)),
        ("uniprot_sprot.dat.gz", False, None, 1_258_291, _at(2024, 1, 3, 10, 22)),
        ("relnotes.txt", False, 512, None, _at(2024, 1, 2, 18, 40)),
        # README has alt="[TXT]", which BioMAJ's default file expression does not match
    ]
    assert entries[2].fingerprint == _md5("uniprot_sprot.dat.gz" + "03-Jan-2024 10:22" + "1.2M")
    recognised = [entry.name for entry in parse_index([_page("apache_biomaj.html")], now=NOW)]
    assert "README" in recognised


def test_biomaj_rules_without_sizes_and_with_a_date_format() -> None:
    rules = HttpParseRules(
        dir_line=r'<a href="([^"]+)/">',
        file_line=r'<a href="([^"]+\.gz)">[^<]*</a>\s+(\d{4}/\d{2}/\d{2})',
        dir_date=-1,
        file_size=-1,
        file_date_format="%%Y/%%m/%%d",
    )
    page = '<a href="sub/">sub/</a>\n<a href="a.gz">a.gz</a>  2024/01/03\n'
    assert _summary(parse_index([page], rules=rules, now=NOW)) == [
        ("sub", True, None, None, NOW),
        ("a.gz", False, None, None, _at(2024, 1, 3)),
    ]


def test_biomaj_rules_without_dates() -> None:
    rules = HttpParseRules(
        dir_line=r"<dir>(never)</dir>",
        dir_date=-1,
        file_line=r'<a href="([^"]+)">[^<]*</a>\s+(\d+)',
        file_date=-1,
        file_size=2,
    )
    page = '<a href="a.gz">a.gz</a>  1234\n<a href="../">up</a> 1\n'
    assert _summary(parse_index([page], rules=rules, now=NOW)) == [("a.gz", False, 1234, None, NOW)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dir_line": "(unclosed"}, "http.parse.dir.line is not a regular expression"),
        ({"file_size": 4}, "http.group.file.size is 4: its expression allows -1 or 1 to 3"),
        ({"file_name": -1}, "http.group.file.name is -1: its expression allows 1 to 3"),
    ],
)
def test_invalid_biomaj_rules(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {
        "dir_line": APACHE_RULES.dir_line,
        "file_line": APACHE_RULES.file_line,
        **fields,
    }
    with pytest.raises(DefinitionError, match=message):
        HttpParseRules(**settings)  # type: ignore[arg-type]


# --- HTTP index pages: streaming ------------------------------------------------------------


def _nginx_page(count: int) -> Iterator[str]:
    """An nginx index of ``count`` files, a line at a time."""
    yield "<html>\n<head><title>Index of /big/</title></head>\n<body>\n<h1>Index of /big/</h1>"
    yield '<hr><pre><a href="../">../</a>\n'
    for number in range(count):
        name = f"file{number:06d}.dat"
        yield f'<a href="{name}">{name}</a>{" " * 40}03-Jan-2024 10:22 {number:>19}\n'
    yield "</pre><hr></body>\n</html>\n"


def _rechunked(texts: Iterable[str], widths: Iterable[int]) -> Iterator[str]:
    """``texts`` joined and cut again, into chunks of the given widths in turn."""
    cycle = itertools.cycle(widths)
    width, pending = next(cycle), ""
    for text in texts:
        pending += text
        while len(pending) >= width:
            yield pending[:width]
            width, pending = next(cycle), pending[width:]
    yield pending


def test_a_huge_page_streams_in_little_memory() -> None:
    count = 100_000
    tracemalloc.start()
    try:
        seen, last = 0, None
        for entry in parse_index(_rechunked(_nginx_page(count), (1, 13, 64, 200, 509)), now=NOW):
            seen, last = seen + 1, entry
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert last is not None and (last.name, last.size) == ("file099999.dat", 99_999)
    assert peak < 3 * 1024 * 1024


@pytest.mark.parametrize("page", ["apache_fancy.html", "iis.html", "lighttpd.html"])
def test_chunk_boundaries_do_not_change_the_entries(page: str) -> None:
    text = _page(page)
    whole = list(parse_index([text], now=NOW, base_path="/pub/"))
    assert whole
    for cut in range(len(text) + 1):
        chunks = [text[:cut], text[cut:]]
        assert list(parse_index(chunks, now=NOW, base_path="/pub/")) == whole, cut
    assert list(parse_index(iter(text), now=NOW, base_path="/pub/")) == whole


def test_biomaj_rules_stream_too() -> None:
    text = _page("apache_biomaj.html")
    whole = list(parse_index([text], rules=APACHE_RULES, now=NOW))
    assert list(parse_index(iter(text), rules=APACHE_RULES, now=NOW)) == whole


def test_an_endless_record_is_refused() -> None:
    chunks = itertools.repeat("x" * 1000, MAX_RECORD_CHARS // 1000 + 2)
    with pytest.raises(ListingFormatError, match="longer than"):
        list(parse_index(chunks, now=NOW))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "record",
    [
        "<a " * 300_000,  # unclosed tags
        '<a href="x">' * 80_000,  # unclosed links
        "1/3/2024 10:22 AM 12 <a " * 40_000,
        "a" * 1_000_000,
    ],
)
def test_hostile_records_take_linear_time(record: str) -> None:
    # Each took minutes when a pattern scanned to the end of the line from every tag.
    assert list(parse_index([record], now=NOW)) == []
