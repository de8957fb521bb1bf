"""Sealing secrets kept in the database (mirror and webhook credentials) with Fernet.

A sealed value is the text ``sealed:v1:`` and a Fernet token. The key comes from
``CONVEYOR_SECRET_KEY``, or from ``<data_dir>/secret.key``, made (mode 0600) on first use so
the embedded default needs no setup; several machines must share one key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from conveyor.config import Settings

PREFIX = "sealed:v1:"
KEY_FILE = "secret.key"


class SecretError(ValueError):
    """A sealed value cannot be opened (another key, or damaged)."""


class Sealer:
    """Seals and opens secrets with one key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def for_settings(cls, settings: Settings) -> Sealer:
        """The sealer of this deployment's key."""
        if settings.secret_key:
            return cls(settings.secret_key.encode())
        return cls(_key_file(settings.data_dir / KEY_FILE))

    def seal(self, plain: str) -> str:
        """``plain`` sealed."""
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        """The plain text of a sealed value."""
        if not is_sealed(sealed):
            raise SecretError("the value is not sealed")
        try:
            return self._fernet.decrypt(sealed.removeprefix(PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be opened with this key (CONVEYOR_SECRET_KEY changed?)"
            ) from None


def is_sealed(value: object) -> bool:
    """True for a sealed value."""
    return isinstance(value, str) and value.startswith(PREFIX)


def _key_file(path: Path) -> bytes:
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # O_EXCL: of two processes starting at once, one writes and the other reads its key.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key)
    return key


def _read_key(path: Path) -> bytes:
    # The process that created the file may not have written the key yet.
    for _ in range(50):
        key = path.read_bytes().strip()
        if key:
            return key
        time.sleep(0.02)
    raise SecretError(f"{path} is empty; delete it or set CONVEYOR_SECRET_KEY")
