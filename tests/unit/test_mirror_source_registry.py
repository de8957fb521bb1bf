"""The source registry: each protocol's module is loaded when a mirror first needs it."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from conveyor.mirror.sources import base, open_source
from conveyor.mirror.spec import SourceSpec


def test_every_builtin_protocol_names_the_module_that_registers_it() -> None:
    for protocol in base.BUILTIN_MODULES:
        source = open_source(SourceSpec(protocol=protocol, server="example.org:1", remote_dir="/"))
        module = source.__class__.__module__
        assert module == f"conveyor.mirror.sources.{base.BUILTIN_MODULES[protocol]}"
        assert protocol in source.protocols


def test_an_ftp_source_does_not_load_the_ssh_or_object_store_libraries() -> None:
    probe = (
        "import sys\n"
        "from conveyor.mirror.sources import open_source\n"
        "from conveyor.mirror.spec import SourceSpec\n"
        "open_source(SourceSpec(protocol='ftp', server='example.org:21', remote_dir='/'))\n"
        "print(sorted(m for m in ('asyncssh', 's3fs', 'gcsfs') if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == "[]"


def test_every_protocol_a_definition_accepts_has_a_source() -> None:
    accepted = set(get_args(SourceSpec.model_fields["protocol"].annotation))
    assert accepted == set(base.BUILTIN_MODULES)
