"""Which release a run downloads, exactly as BioMAJ decides it (reference A3, steps 2-3).

- No ``release.file``: the release is the date of the newest file selected, ``Y-M-D``
  without zero padding, or ``strftime(release.format)``.
- ``release.file`` without ``release.regexp``: group 1 of ``release.file`` on the name of the
  newest file it matches.
- Both: ``release.file`` must match exactly one file; it is read (at most
  ``MAX_RELEASE_FILE`` bytes, as UTF-8 ignoring errors) and ``release.regexp`` run over it;
  of several hits the highest version wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from packaging.version import InvalidVersion, Version

from conveyor.mirror.definition import ReleaseRule
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import SourceError
from conveyor.mirror.matching import select_files
from conveyor.mirror.sources.base import Source

MAX_RELEASE_FILE = 16 * 1024 * 1024


def release_from_dates(mtimes: Iterable[datetime | None], date_format: str | None) -> str | None:
    """The release named by the newest of ``mtimes`` (None when no file has a date)."""
    newest = max((when for when in mtimes if when is not None), default=None)
    if newest is None:
        return None
    if date_format:
        return newest.strftime(date_format)
    return f"{newest.year}-{newest.month}-{newest.day}"


def release_from_source(rule: ReleaseRule, source: Source) -> str:
    """The release that ``rule.file`` (and ``rule.regexp``) find in ``source``."""
    if not rule.file:
        raise ValueError("release_from_source needs release.file")
    found = [selected.entry for selected in select_files(source, [rule.file])]
    if not rule.regexp:
        return _from_name(rule.file, found)
    if len(found) != 1:
        names = ", ".join(entry.name for entry in found[:5])
        raise SourceError(
            f"release.file {rule.file!r} must match exactly one file to read the release "
            f"from, and matches {len(found)} ({names})",
            permanent=True,
        )
    text = _read_text(source, found[0].name)
    return _highest(rule.regexp, text, found[0].name)


def _from_name(pattern: str, found: list[RemoteEntry]) -> str:
    newest = max(found, key=lambda entry: entry.mtime.timestamp() if entry.mtime else 0.0)
    match = re.match(pattern.removeprefix("^/").removeprefix("^"), newest.name.rsplit("/", 1)[-1])
    if match is None or not match.groups() or match.group(1) is None:
        raise SourceError(
            f"release.file {pattern!r} needs a capture group to name the release "
            f"(it matched {newest.name!r})",
            permanent=True,
        )
    return match.group(1)


def _read_text(source: Source, path: str) -> str:
    data = bytearray()
    for chunk in source.read(path):
        data += chunk
        if len(data) > MAX_RELEASE_FILE:
            raise SourceError(
                f"release file {path} is larger than {MAX_RELEASE_FILE} bytes", permanent=True
            )
    return data.decode("utf-8", "ignore")


def _highest(regexp: str, text: str, path: str) -> str:
    hits = [hit[0] if isinstance(hit, tuple) else hit for hit in re.findall(regexp, text)]
    hits = [hit for hit in hits if hit]
    if not hits:
        raise SourceError(f"release.regexp {regexp!r} finds nothing in {path}", permanent=True)
    return str(max(hits, key=_version_key))


def _version_key(text: str) -> tuple[int, Version | tuple[tuple[int, str], ...]]:
    # PEP 440 versions compare as packaging orders them (as BioMAJ does); other names
    # (2024_01, r42), which packaging now refuses, compare by their runs of digits and
    # letters and rank below any PEP 440 version.
    try:
        return (1, Version(text))
    except InvalidVersion:
        runs = re.findall(r"\d+|\D+", text)
        return (0, tuple((int(run), "") if run.isdigit() else (-1, run) for run in runs))
