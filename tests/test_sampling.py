"""`vaegan sample`: prior samples from an exported decoder with onnxruntime + numpy alone."""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from tests.tmpfs import fill, mounted_tmpfs
from vaegan import sample
from vaegan.artifacts import onnx_runtime
from vaegan.artifacts.images import image_grid, to_uint8
from vaegan.config import Config
from vaegan.errors import CheckpointError, ConfigError
from vaegan.nn.networks import VAEGAN, build_model, model_args_for
from vaegan.nn.onnx_graphs import export_decoder_onnx


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VAEGAN]:
    """A seed-preset decoder with spread-out weights (so images vary), exported once."""
    torch.manual_seed(3)
    model = build_model(model_args_for("seed"))
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.mul_(8.0)
    path = export_decoder_onnx(model.eval(), tmp_path_factory.mktemp("sample") / "decoder.onnx")
    return path, model


def _read_png(path: Path) -> np.ndarray:
    """Decode the 8-bit greyscale, filter-0 PNGs `vaegan.artifacts.images` writes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 0)
    idat_len = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    rows = np.frombuffer(zlib.decompress(data[41 : 41 + idat_len]), dtype=np.uint8)
    rows = rows.reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vaegan", "sample", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_generate_matches_the_torch_decoder_and_is_seeded(decoder: tuple[Path, VAEGAN]) -> None:
    path, model = decoder
    session = onnx_runtime.create_session(path, "cpu")
    images = sample.generate(session, 16, seed=7)
    assert images.shape == (16, 28, 28) and images.dtype == np.uint8
    z = np.random.default_rng(7).standard_normal((16, 2), dtype=np.float32)
    with torch.no_grad():
        expected = to_uint8(model.decoder.decode(torch.from_numpy(z)).numpy()[:, 0])
    assert np.abs(images.astype(int) - expected).max() <= 1  # a rounding boundary at most
    assert images.std() > 10  # not a flat grey field
    assert np.array_equal(sample.generate(session, 16, seed=7), images)
    assert not np.array_equal(sample.generate(session, 16, seed=8), images)
    assert np.array_equal(sample.generate(session, 16, seed=7, latent_dim=2), images)


def test_cli_writes_a_deterministic_png_grid(decoder: tuple[Path, VAEGAN], tmp_path: Path) -> None:
    path, _ = decoder
    first = _cli("--model", str(path), "--n", "16", "--out", "grid.png", "--seed", "5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote 16 images" in first.stdout and "grid.png" in first.stdout
    again = _cli("--model", str(path), "--n", "16", "--out", "again.png", "--seed", "5", cwd=tmp_path)
    other = _cli("--model", str(path), "--n", "16", "--out", "other.png", "--seed", "6", cwd=tmp_path)
    assert again.returncode == other.returncode == 0
    grid = _read_png(tmp_path / "grid.png")
    assert grid.shape == (4 * 30 + 2, 4 * 30 + 2)  # 4 x 4 tiles of 28 px with 2 px padding
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert (tmp_path / "grid.png").read_bytes() != (tmp_path / "other.png").read_bytes()
    session = onnx_runtime.create_session(path, "cpu")
    assert np.array_equal(grid, image_grid(sample.generate(session, 16, seed=5), ncols=4))


def test_cli_rejects_n_below_one(decoder: tuple[Path, VAEGAN], tmp_path: Path) -> None:
    result = _cli("--model", str(decoder[0]), "--n", "0", "--out", "grid.png", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "vaegan sample: error: --n: 0 images requested, need at least 1"
    )
    assert not (tmp_path / "grid.png").exists()


def test_batches_do_not_change_the_images(
    decoder: tuple[Path, VAEGAN], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = onnx_runtime.create_session(decoder[0], "cpu")
    whole = sample.generate(session, 70, seed=3)
    monkeypatch.setattr(sample, "BATCH", 32)
    batches = list(sample.generate_batches(session, 70, seed=3))
    assert [len(b) for b in batches] == [32, 32, 6]
    assert np.array_equal(np.concatenate(batches), whole)


def test_cli_writes_many_images_as_npy(decoder: tuple[Path, VAEGAN], tmp_path: Path) -> None:
    result = _cli("--model", str(decoder[0]), "--n", "1500", "--out", "many.npy", "--seed", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    array = np.load(tmp_path / "many.npy")
    assert array.shape == (1500, 28, 28) and array.dtype == np.uint8
    session = onnx_runtime.create_session(decoder[0], "cpu")
    assert np.array_equal(array, sample.generate(session, 1500, seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.npy"]  # no staging file left


@pytest.mark.parametrize(
    ("n", "out", "message"),
    [
        (
            "5000",
            "grid.png",
            "--n: 5000 images do not fit a .png output (at most 4,096); write a .npy instead",
        ),
        ("2000000", "all.npy", "--n: 2000000 images do not fit a .npy output (at most 1,000,000)"),
        ("16", "grid.jpg", "--out: grid.jpg must end in .png (a grid) or .npy"),
        ("16", "sub", "--out: sub must end in .png"),
        ("16", "folder.png", "--out: folder.png is a directory; name a file in it"),
        ("16", "missing/grid.png", "--out: directory missing does not exist"),
    ],
)
def test_cli_refuses_outputs_it_cannot_write_before_decoding(
    decoder: tuple[Path, VAEGAN], tmp_path: Path, n: str, out: str, message: str
) -> None:
    """`--n 100000000` used to be a MemoryError traceback, a directory --out a traceback, and a
    missing folder was created silently."""
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "sub").mkdir()
    result = _cli("--model", str(decoder[0]), "--n", n, "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"vaegan sample: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "sub"]


def test_cli_refuses_a_negative_seed_in_one_line(decoder: tuple[Path, VAEGAN], tmp_path: Path) -> None:
    result = _cli("--model", str(decoder[0]), "--seed", "-1", "--out", "grid.png", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vaegan sample: error: --seed: -1 is negative; a seed is an integer >= 0"
    ]
    assert list(tmp_path.iterdir()) == []


def test_cli_onto_a_full_disk_is_one_line_and_keeps_the_previous_output(
    decoder: tuple[Path, VAEGAN], tmp_path: Path
) -> None:
    """A .npy used to be written through a memory map: SIGBUS (exit 135) and a staging file left."""
    with mounted_tmpfs(tmp_path / "disk", size="2m") as disk:
        previous = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
        np.save(disk / "many.npy", previous)
        npy = _cli("--model", str(decoder[0]), "--n", "10000", "--out", str(disk / "many.npy"), cwd=tmp_path)
        (disk / "grid.png").write_bytes(b"the previous grid")
        fill(disk)
        png = _cli("--model", str(decoder[0]), "--n", "4096", "--out", str(disk / "grid.png"), cwd=tmp_path)
        assert np.array_equal(np.load(disk / "many.npy"), previous)
        assert (disk / "grid.png").read_bytes() == b"the previous grid"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "grid.png", "many.npy"]  # no staging
    for result, name in ((npy, "many.npy"), (png, "grid.png")):
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"vaegan sample: error: cannot write {disk / name}: No space left on device (")
        assert line.endswith(f"MB free in {disk}); the previous output is kept")


def test_sampling_from_a_file_never_imports_torch(decoder: tuple[Path, VAEGAN], tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from vaegan.cli import main\n"
        f"code = main(['sample', '--model', {str(decoder[0])!r}, '--n', '9', '--out', 'g.png'])\n"
        "heavy = sorted(m for m in ('torch', 'mlflow', 'onnx') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 []"
    assert _read_png(tmp_path / "g.png").shape == (3 * 30 + 2, 3 * 30 + 2)


def _args(model: str, out: Path, n: int = 4) -> argparse.Namespace:
    return argparse.Namespace(model=model, n=n, out=str(out), seed=0, tracking_uri=None)


def test_missing_file_and_wrong_graph_are_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    with pytest.raises(ConfigError, match="is neither an existing .onnx file nor an MLflow model URI"):
        sample.run(Config(), _args(str(tmp_path / "missing.onnx"), out))

    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be loaded by ONNX Runtime"):
        sample.run(Config(), _args(str(not_onnx), out))

    relu = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["b"])], "relu",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2])],
    )  # fmt: skip
    other = tmp_path / "other.onnx"
    graph = helper.make_model(relu, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    other.write_bytes(graph.SerializeToString())
    with pytest.raises(CheckpointError, match=r"other\.onnx: not a vaegan decoder graph: inputs \['a'\]"):
        sample.run(Config(), _args(str(other), out))
    assert not out.exists()


def test_model_uris_are_told_from_paths() -> None:
    assert sample.is_model_uri("models:/vaegan-decoder@champion")
    assert sample.is_model_uri("models:/vaegan-decoder/3")
    assert sample.is_model_uri("runs:/0123abcd/decoder")
    assert not sample.is_model_uri("models/onnx/decoder.onnx")
    assert not sample.is_model_uri("/abs/models:/decoder.onnx")
