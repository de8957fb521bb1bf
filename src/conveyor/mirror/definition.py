"""A mirror definition: where the bank is, which files to take, how to detect its release.

The native form (TOML, YAML or JSON through the API and CLI) and BioMAJ ``.properties``
files (see :mod:`conveyor.mirror.properties`) both end up as a :class:`MirrorDefinition`,
validated before anything is stored: regexps compile, retry strings parse, options are
known, direct files name a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from conveyor.ingest.paths import UnsafePath, relative_parts
from conveyor.mirror.errors import DefinitionError
from conveyor.mirror.matching import compile_patterns
from conveyor.mirror.retry import retry_policy
from conveyor.mirror.schedule import next_run
from conveyor.mirror.spec import SourceSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ReleaseRule(BaseModel):
    """BioMAJ's ``release.*``: how a run finds the release it downloads (reference A3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A regexp naming the file that tells the release (group 1 of it, or its content).
    file: str | None = None
    # A regexp run over that file's content; the highest version found wins.
    regexp: str | None = None
    # strftime format of a release taken from the newest file's date (default Y-M-D).
    format: str | None = None
    # Compare file lists, not only the release name, with the last release.
    control: bool = False
    # Where to look for ``file`` when not in the mirrored folder.
    source: SourceSpec | None = None

    @field_validator("file", "regexp")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a regexp: {error}") from None
        return value or None


class DirectFile(BaseModel):
    """One known file (``direct*`` protocols, and each ``remote.file.N`` of ``multi``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceSpec
    path: str
    save_as: str

    @model_validator(mode="after")
    def _names_a_file(self) -> Self:
        if not self.path.strip("/"):
            raise ValueError("a direct file needs a path to a file, not a folder")
        return self

    @field_validator("save_as")
    @classmethod
    def _stays_inside(cls, value: str) -> str:
        try:
            parts = relative_parts(value)
        except UnsafePath as error:
            raise ValueError(f"save_as {error}") from None
        if not parts or value.startswith("/"):
            raise ValueError(f"save_as {value!r} must be a relative path to a file")
        return "/".join(parts)


class MirrorDefinition(BaseModel):
    """Everything a run of a mirror needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    # The folder to list; None when the mirror is made only of direct files.
    source: SourceSpec | None = None
    files: list[DirectFile] = Field(default_factory=list)
    remote_files: list[str] = Field(default_factory=lambda: [".*"])
    # Which downloaded files the release keeps (BioMAJ ``local.files``); all by default.
    local_files: list[str] = Field(default_factory=lambda: ["**/*"])
    # A JSON file of file records replacing the listing (BioMAJ ``remote.list``).
    remote_list: str | None = None
    release: ReleaseRule = ReleaseRule()
    timeout_download: float = Field(3600.0, gt=0)
    threads: int = Field(4, ge=1, le=256)
    stop_condition: str | None = None
    wait_policy: str | None = None
    # When to run by itself: a cron expression in UTC ("0 3 * * *": every day at 03:00).
    schedule: str | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                f"mirror name {value!r} must be 1-100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.source is None and not self.files:
            raise ValueError("a mirror needs a source folder or direct files")
        if self.source is not None and self.source.direct:
            raise ValueError(
                f"protocol {self.source.protocol} names files, not a folder: use files"
            )
        try:
            compile_patterns(self.remote_files)
            compile_patterns(self.local_files)
            retry_policy(self.stop_condition, self.wait_policy)
            if self.schedule:
                next_run(self.schedule, datetime.now(UTC))
        except DefinitionError as error:
            raise ValueError(str(error)) from None
        return self


def parse_definition(data: Mapping[str, Any]) -> MirrorDefinition:
    """A validated definition, or a :class:`DefinitionError` listing every problem."""
    try:
        return MirrorDefinition.model_validate(data)
    except ValidationError as error:
        raise DefinitionError(describe(error)) from None


def describe(error: ValidationError) -> str:
    """One readable line per problem: ``where: what``."""
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in problem["loc"]) or "definition"
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
