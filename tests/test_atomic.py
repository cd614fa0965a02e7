"""qcore.model.atomic: every output file appears complete, with a new file's permissions, or not at all."""
import os
import stat

import pytest

from qcore.model.atomic import atomic_output, current_umask


def test_a_written_file_replaces_the_target_with_the_umask_permissions(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    old_mask = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        with atomic_output(target) as f:
            f.write(b"new bytes")
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o640  # mkstemp alone would leave 0600
    finally:
        os.umask(old_mask)
    assert target.read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_an_error_leaves_the_target_as_it_was_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_output(target, "w", encoding="utf-8") as f:
            f.write('{"partial": ')
            raise RuntimeError("failed midway")
    assert target.read_text() == "{}"
    assert os.listdir(tmp_path) == ["out.json"]
