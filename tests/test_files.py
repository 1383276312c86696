"""patchmix.files: atomic writes and JSON reads, the one implementation every writer uses."""

import os

import pytest

from patchmix.files import atomic_path, atomic_write_text, read_json, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"v": 1})  # parent folders are created
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert read_json(path) == {"v": 1} and os.listdir(tmp_path / "sub") == ["a.json"]
    atomic_write_text(path, '{"v": 3}')
    assert read_json(path) == {"v": 3}


def test_read_json_default(tmp_path):
    assert read_json(tmp_path / "missing.json", None) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json", {}) == {}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
