"""The forward-only reader tarfile iterates bundles through."""

from __future__ import annotations

import io

import pytest

from conveyor.ingest.forward import ForwardReader


def test_reads_and_seeks_forward_only() -> None:
    reader = ForwardReader(io.BytesIO(bytes(range(256)) * 10_000))
    assert reader.read(3) == bytes([0, 1, 2])
    assert reader.seek(2_000_000) == 2_000_000
    assert reader.tell() == 2_000_000
    assert reader.read(2) == bytes([2_000_000 % 256, (2_000_000 + 1) % 256])
    assert reader.seek(5, io.SEEK_CUR) == 2_000_007
    with pytest.raises(io.UnsupportedOperation, match="cannot seek back"):
        reader.seek(10)
    assert reader.seek(10_000_000) == 2_560_000  # past the end: stops at the end
    assert reader.read(10) == b""
