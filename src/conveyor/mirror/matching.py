"""Which remote files a mirror takes: BioMAJ's ``remote.files`` semantics, streamed.

A pattern is a Python regexp matched with ``re.match`` (anchored at the start only). A
pattern with ``/`` walks folders: each component but the last selects sub-folders by name,
the last selects files in them; ``**/*`` takes every file below. A leading ``^`` component
(``^/bank/x``) is dropped. Capture groups rename the saved file: its path becomes the groups
joined by ``/`` (``^(sub)/(file\\.gz)$`` saves ``sub/file.gz``).

Unlike BioMAJ, which lists a folder once per pattern, every folder is listed once for all
the patterns that reach it, and a file two patterns select is taken once. Folders waiting
to be listed are the only state kept; files are yielded as each listing streams in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from conveyor.ingest.paths import UnsafePath, relative_parts
from conveyor.mirror.entries import RemoteEntry
from conveyor.mirror.errors import DefinitionError, SourceError
from conveyor.mirror.sources.base import Source

EVERYTHING = "**/*"


@dataclass(frozen=True, slots=True)
class Selected:
    """A remote file a mirror takes: its listing entry (named from the mirror's root) and
    the path it is saved at in the release."""

    entry: RemoteEntry
    save_as: str


@dataclass(frozen=True)
class _Pattern:
    text: str
    steps: tuple[str, ...]
    whole: re.Pattern[str] | None


def compile_patterns(patterns: Iterable[str]) -> list[_Pattern]:
    """Check and compile ``remote.files`` patterns; a bad regexp is a DefinitionError."""
    compiled = []
    for text in patterns:
        steps = [step for step in text.split("/") if step != ""]
        if steps and steps[0] == "^":
            steps = steps[1:]
        if not steps:
            raise DefinitionError(f"remote.files pattern {text!r} selects nothing")
        walks_everything = EVERYTHING in text
        try:
            for step in steps:
                if not walks_everything or step not in ("**", "*"):
                    re.compile(step)
            # ``**/*`` is not a regexp: such a pattern saves files at their own paths.
            whole = None if walks_everything else re.compile(_whole_path_regexp(text))
        except re.error as error:
            raise DefinitionError(
                f"remote.files pattern {text!r} is not a regexp: {error}"
            ) from None
        compiled.append(_Pattern(text, tuple(steps), whole))
    return compiled


def select_files(source: Source, patterns: Iterable[str], root: str = "") -> Iterator[Selected]:
    """The files of ``source`` under ``root`` that ``patterns`` select, as listings stream in.

    Raises a permanent :class:`SourceError` when nothing at all matches, as BioMAJ does
    ("no file found matching expressions").
    """
    compiled = compile_patterns(patterns)
    pending: dict[str, list[tuple[str, ...]]] = {root.strip("/"): [p.steps for p in compiled]}
    found = False
    while pending:
        folder, wanted = pending.popitem()
        for entry, rest in _walk_folder(source, folder, wanted):
            if rest is not None:
                pending.setdefault(entry.name, []).append(rest)
                continue
            found = True
            yield Selected(entry, save_path(entry.name, root, compiled))
    if not found:
        raise SourceError(
            f"no file found matching {' '.join(p.text for p in compiled)}", permanent=True
        )


def _walk_folder(
    source: Source, folder: str, wanted: list[tuple[str, ...]]
) -> Iterator[tuple[RemoteEntry, tuple[str, ...] | None]]:
    """Files of ``folder`` to take (rest ``None``) and sub-folders to list with what is left."""
    files = [steps[0] for steps in wanted if len(steps) == 1]
    deeper = [steps for steps in wanted if len(steps) > 1 and steps[:2] != ("**", "*")]
    everything = any(steps[:2] == ("**", "*") for steps in wanted)
    for listed in source.list(folder):
        _check_name(listed.name, folder)
        entry = listed.joined(folder)
        if listed.is_dir:
            if everything:
                yield entry, ("**", "*")
            for steps in deeper:
                if re.match(steps[0], listed.name):
                    yield entry, steps[1:]
        elif everything or any(re.match(step, listed.name) for step in files):
            yield entry, None


def save_path(name: str, root: str, patterns: Iterable[_Pattern]) -> str:
    """Where a selected file is saved: the capture groups of the first pattern that has
    them and matches its whole path, joined by ``/``; else its path under ``root``."""
    relative = name[len(root.strip("/")) :].lstrip("/") if root.strip("/") else name
    for pattern in patterns:
        match = pattern.whole.match(relative) if pattern.whole else None
        if match is None or not match.groups():
            continue
        groups = [group for group in match.groups() if group]
        if groups:
            return _safe("/".join(groups), pattern.text)
    return _safe(relative, relative)


def path_selected(path: str, patterns: Iterable[_Pattern]) -> bool:
    """Whether a saved path matches one of ``patterns`` (BioMAJ ``local.files``)."""
    for pattern in patterns:
        if pattern.whole is None:
            prefix = "/".join(pattern.steps[: pattern.steps.index("**")])
            if not prefix or path.startswith(prefix + "/"):
                return True
        elif pattern.whole.match(path):
            return True
    return False


def _whole_path_regexp(text: str) -> str:
    # BioMAJ rewrites a leading ^ to ^/ and matches names that start with /; our names are
    # relative, so a leading ^/ (or ^) is simply the start.
    if text.startswith("^/"):
        return "^" + text[2:]
    return text


def _check_name(name: str, folder: str) -> None:
    if "/" in name or name in ("", ".", ".."):
        raise SourceError(
            f"the listing of {folder or '/'} names {name!r}, which is not a plain name",
            permanent=True,
        )


def _safe(path: str, origin: str) -> str:
    try:
        parts = relative_parts(path)
    except UnsafePath as error:
        raise SourceError(f"{origin!r} would save a file at {error}", permanent=True) from None
    if not parts:
        raise SourceError(f"{origin!r} would save a file at an empty path", permanent=True)
    return "/".join(parts)
