"""consumer.zip packages: what is refused before anything is written, and safe unpacking."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.consumers.package import PackageError, PackageLimits, read_package, unpack
from tests.support.consumers import make_zip

MAIN = b"import sys\nprint(sys.argv)\n"


def test_a_package_at_the_top_is_read_and_unpacked(tmp_path: Path) -> None:
    made = make_zip(
        tmp_path / "consumer.zip",
        {
            "__main__.py": MAIN,
            "init.sh": b"#!/bin/sh\nexit 0\n",
            "requirements.txt": b"jsonpath2\n",
            "jsonpath2.txt": b'$[?(@["eventID"])]\n',
            "lib/helper.py": b"X = 1\n",
            "tools/run.bin": b"#!/bin/sh\n",
        },
    )
    package = read_package(made)
    assert (package.root, package.has_init, package.has_requirements) == ("", True, True)
    assert package.filter_text == '$[?(@["eventID"])]'
    assert len(package.version) == 12
    code = unpack(package, tmp_path / "code")
    assert (code / "__main__.py").read_bytes() == MAIN
    assert (code / "lib" / "helper.py").exists()
    assert (code / "init.sh").stat().st_mode & 0o111
    assert (code / "tools" / "run.bin").stat().st_mode & 0o111
    assert not (tmp_path / "code.part").exists()


def test_a_package_in_one_top_folder_is_accepted(tmp_path: Path) -> None:
    made = make_zip(tmp_path / "c.zip", {"upper/__main__.py": MAIN, "upper/x.txt": b"x"})
    package = read_package(made)
    assert package.root == "upper"
    assert package.filter_text is None
    assert unpack(package, tmp_path / "code") == tmp_path / "code" / "upper"


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"x.py": MAIN}, (), "no __main__.py"),
        ({"__main__.py": MAIN, "../evil.py": b"x"}, (), "'..'"),
        ({"__main__.py": MAIN, "a/../../evil.py": b"x"}, (), "'..'"),
        ({"__main__.py": MAIN, "/etc/evil": b"x"}, (), "absolute"),
        ({"__main__.py": MAIN, "C:/evil": b"x"}, (), "absolute"),
        ({"__main__.py": MAIN, "link": b"/etc/passwd"}, ("link",), "symbolic link"),
        ({"__main__.py": MAIN, "a//b.txt": b"1", "a/b.txt": b"2"}, (), "twice"),
        ({"__main__.py": MAIN, "jsonpath2.txt": b"\xff\xfe"}, (), "not UTF-8"),
    ],
)
def test_hostile_or_broken_packages_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: tuple[str, ...], reason: str
) -> None:
    made = make_zip(tmp_path / "c.zip", members, links)
    with pytest.raises(PackageError, match=reason):
        read_package(made)


def test_limits_on_members_size_and_ratio(tmp_path: Path) -> None:
    many = make_zip(
        tmp_path / "many.zip", {"__main__.py": MAIN, **{f"f{n}": b"" for n in range(5)}}
    )
    with pytest.raises(PackageError, match="members"):
        read_package(many, PackageLimits(max_members=3))
    large = make_zip(tmp_path / "large.zip", {"__main__.py": MAIN, "big": b"x" * 5000})
    with pytest.raises(PackageError, match="unpacks to"):
        read_package(large, PackageLimits(max_unpacked_bytes=4000, max_ratio=1e9))
    with pytest.raises(PackageError, match="zip bomb"):
        read_package(large, PackageLimits(max_ratio=10))


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "consumer.zip"
    path.write_bytes(b"just text")
    with pytest.raises(PackageError, match="not a zip"):
        read_package(path)
