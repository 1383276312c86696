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


def test_a_full_disk_is_an_output_error_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    """``ENOSPC`` (injected) while a file is written: one :class:`OutputError` naming the target, the earlier
    version of the file intact, no temporary left."""
    import errno

    from patchmix.errors import OutputError

    path = tmp_path / "metrics.json"
    write_json(path, {"v": 1})
    with pytest.raises(OutputError, match=rf"cannot write {path}: No space left on device; the files written"):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write('{"v": 2, "ha')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert read_json(path) == {"v": 1} and os.listdir(tmp_path) == ["metrics.json"]

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the flush to disk is where a full disk often shows
    with pytest.raises(OutputError, match="cannot write .*metrics.json: No space left on device"):
        write_json(path, {"v": 3})
    assert read_json(path) == {"v": 1} and os.listdir(tmp_path) == ["metrics.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_the_event_log_on_a_full_disk_is_an_output_error_naming_it():
    """``/dev/full`` answers every write with ``ENOSPC``: the log's line-buffered write raises an
    :class:`OutputError` naming the file, and leaving the ``with`` block reports that error, not the close's."""
    from patchmix.errors import OutputError
    from patchmix.training.log import Log

    with pytest.raises(OutputError, match="cannot write /dev/full: No space left on device"), Log("/dev/full") as log:
        log.event("start", epoch=0)
