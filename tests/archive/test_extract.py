"""Tests of the restore's one-call file creation in C (extract._c_write_new); restores as a
whole, with and without it, are tested in tests/test_restore.py."""

from __future__ import annotations

import errno
import importlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_built

extract_mod = importlib.import_module("backup.archive.extract")


@pytest.fixture
def write_new() -> Any:
    return require_built(extract_mod._c_write_new, "a restored file's creation")


def test_creates_the_file_with_its_content_and_metadata(write_new: Any, tmp_path: Path) -> None:
    p = os.fsencode(tmp_path / "f\xff")
    for mtime_ns in (1_700_000_000_123_456_789, -1_500_000_001, 0):
        if os.path.lexists(p):
            os.unlink(p)
        assert write_new(p, b"data" * 1000, 0o4751, os.getuid(), os.getgid(), mtime_ns, True) == 0
        st = os.lstat(p)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4751
        assert st.st_mtime_ns == mtime_ns and st.st_atime_ns == mtime_ns
        with open(p, "rb") as f:
            assert f.read() == b"data" * 1000


def test_an_open_that_creates_nothing_returns_its_errno(write_new: Any, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(existing)
    assert write_new(os.fsencode(existing), b"new", 0o600, 0, 0, 0, False) == errno.EEXIST
    # a symlink in the way is never followed
    assert write_new(os.fsencode(link), b"new", 0o600, 0, 0, 0, False) == errno.EEXIST
    assert existing.read_bytes() == b"keep"
    missing_parent = os.fsencode(tmp_path / "no" / "f")
    assert write_new(missing_parent, b"x", 0o600, 0, 0, 0, False) == errno.ENOENT
    under_a_file = os.fsencode(existing / "f")
    assert write_new(under_a_file, b"x", 0o600, 0, 0, 0, False) == errno.ENOTDIR


def test_refuses_a_path_with_a_nul(write_new: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedded null byte"):
        write_new(os.fsencode(tmp_path / "a") + b"\0b", b"x", 0o600, 0, 0, 0, False)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_raise_oserror_naming_the_path(write_new: Any, tmp_path: Path) -> None:
    long_name = os.fsencode(tmp_path) + b"/" + b"n" * 300
    with pytest.raises(OSError) as info:
        write_new(long_name, b"x", 0o600, 0, 0, 0, False)
    assert info.value.errno == errno.ENAMETOOLONG and info.value.filename == long_name
