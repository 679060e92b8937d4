"""pconv_deploy.files: the one atomic write (checked on real files)."""

import os
import stat

import pytest

from pconv_deploy.files import atomic_write, clean_stale_temps, temp_path, write_text_atomic


def test_written_file_has_the_mode_open_gives_and_no_temp_is_left(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "out.bin"
    with atomic_write(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors creates its files
        os.write(fd, b"data")
        os.close(fd)
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "plain.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = write_text_atomic(tmp_path / "report.json", "old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_cleanup_removes_only_our_dead_temps_of_the_given_targets(tmp_path):
    ours = temp_path(tmp_path / "a.png").name.replace(f"-{os.getpid()}-", "-999999999-")
    (tmp_path / ours).write_text("stale")
    other_target = temp_path(tmp_path / "b.png").name.replace(f"-{os.getpid()}-", "-999999999-")
    (tmp_path / other_target).write_text("not ours to judge")
    (tmp_path / ".notes.txt.tmp-999999").write_text("precious")
    assert clean_stale_temps(tmp_path, targets={"a.png"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other_target, ".notes.txt.tmp-999999"])
