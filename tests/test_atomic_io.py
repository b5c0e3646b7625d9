import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tmpfs import fill, mounted_tmpfs
from vaegan.artifacts.atomic_io import atomic_directory, write_bytes
from vaegan.artifacts.checkpoint import save_checkpoint
from vaegan.errors import OutputError, VaeganError


def test_written_files_get_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a.bin", b"x")
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "f").write_bytes(b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "dir"):
        raise RuntimeError("stage failed")
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_identical_checkpoints_are_identical_bytes(tmp_path: Path) -> None:
    payload = {"kind": "vaegan", "weights": torch.arange(6.0).reshape(2, 3), "step": 3}
    save_checkpoint(tmp_path / "a.pt", payload)
    save_checkpoint(tmp_path / "b.pt", payload)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_staging_is_removed_by_the_next_write(tmp_path: Path) -> None:
    # What a SIGKILL between staging and rename leaves: a staging folder and a staging file.
    dead = _dead_pid()
    stale_dir = tmp_path / f".prepared.{dead}.abc123.tmp"
    (stale_dir / "inner").mkdir(parents=True)
    stale_file = tmp_path / f".vaegan.pt.{dead}.xyz789.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    live = tmp_path / f".prepared.{os.getpid()}.live00.tmp"  # a writer that is still running
    live.mkdir()
    with atomic_directory(tmp_path / "prepared") as staging:
        (staging / "x.npy").write_bytes(b"new")
    write_bytes(tmp_path / "vaegan.pt", b"whole")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "prepared", "vaegan.pt"])
    assert (tmp_path / "vaegan.pt").read_bytes() == b"whole"


def test_a_full_disk_is_one_output_error_naming_the_path_and_keeps_the_previous_output(
    tmp_path: Path,
) -> None:
    with mounted_tmpfs(tmp_path / "disk", size="1m") as disk:
        target = disk / "out.bin"
        target.write_bytes(b"old")
        folder = disk / "onnx"
        folder.mkdir()
        (folder / "decoder.onnx").write_bytes(b"old graph")
        with pytest.raises(OutputError) as file_error:
            write_bytes(target, b"x" * 2_000_000)
        with pytest.raises(OutputError) as folder_error, atomic_directory(folder) as staging:
            write_bytes(staging / "decoder.onnx", b"y" * 2_000_000)  # an atomic file inside the folder
        fill(disk)
        with pytest.raises(OutputError) as full_error:
            write_bytes(target, b"z" * 10_000)
        assert target.read_bytes() == b"old"
        assert (folder / "decoder.onnx").read_bytes() == b"old graph"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "onnx", "out.bin"]  # no staging left
        assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx"]
    for error, path in ((file_error, target), (folder_error, folder), (full_error, target)):
        message = str(error.value)
        assert message.startswith(f"cannot write {path}: No space left on device (")
        assert re.search(
            rf"\(\d+\.\d MB free in {re.escape(str(disk))}\); the previous output is kept$", message
        )
    assert "(0.0 MB free in" in str(full_error.value)
    assert isinstance(file_error.value, VaeganError) and file_error.value.exit_code == 2
