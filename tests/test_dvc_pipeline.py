"""The data stages under real DVC: `dvc repro prepare` runs fetch and prepare, a second repro does
nothing, a params change re-runs only what reads it, and `dvc push`/`dvc pull` round-trip the data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vaegan.data.download import fetch_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA_STAGES = ("fetch", "prepare")


def dvc(repo: Path, *args: str) -> str:
    """Run the venv's `dvc` in `repo`; fail the test with its output when it exits non-zero."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{output}"
    return output


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".gitignore"
    }


def code_deps() -> list[str]:
    """The source files and directories the data stages depend on, as dvc.yaml lists them."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    return sorted({dep for name in DATA_STAGES for dep in stages[name]["deps"] if dep.startswith("src/")})


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repo with the pipeline files, data.source=sample and a tmp local remote."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = (REPO_ROOT / "params.yaml").read_text()
    assert "  source: auto " in params
    (repo / "params.yaml").write_text(params.replace("  source: auto ", "  source: sample ", 1))
    for dep in code_deps():
        source, target = REPO_ROOT / dep, repo / dep
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    return repo


def test_repo_has_a_default_local_remote_outside_the_repo() -> None:
    assert dvc(REPO_ROOT, "config", "--project", "core.remote").strip() == "local"
    listed = dvc(REPO_ROOT, "remote", "list", "--project").split()
    remote = Path(listed[listed.index("local") + 1])
    assert remote.is_absolute() and remote == (REPO_ROOT / ".dvc" / "../../vaegan-dvc-remote").resolve()
    assert REPO_ROOT.resolve() not in remote.parents


@pytest.mark.slow
def test_data_stages_repro_noop_and_push_pull_round_trip(dvc_repo: Path, tmp_path: Path) -> None:
    repo = dvc_repo
    out = dvc(repo, "repro", "prepare")
    assert "Running stage 'fetch'" in out and "Running stage 'prepare'" in out
    data = repo / "data"
    assert (data / "prepared" / "train-images.npy").is_file()
    assert (data / "raw" / "mnist" / "SOURCE.json").is_file()
    assert (data / ".gitignore").read_text().split() == ["/prepared"]
    assert (data / "raw" / ".gitignore").read_text().split() == ["/mnist"]

    again = dvc(repo, "repro", "prepare")
    assert "Running stage" not in again
    assert "didn't change" in again or "up to date" in again

    # A param only `prepare` reads re-runs prepare alone.
    params = repo / "params.yaml"
    text = params.read_text()
    assert "  seed: 0                   # seed of the train/val split" in text
    params.write_text(
        text.replace("  seed: 0                   # seed", "  seed: 1                   # seed")
    )
    changed = dvc(repo, "repro", "prepare")
    assert "Running stage 'prepare'" in changed and "Running stage 'fetch'" not in changed
    assert "up to date" in dvc(repo, "status", *DATA_STAGES)

    before = tree_digest(data)
    assert len(before) == 5 + 8  # 4 IDX + SOURCE.json; 6 arrays + stats.json + examples.png
    dvc(repo, "push", *DATA_STAGES)
    assert any((tmp_path / "remote").rglob("*"))
    shutil.rmtree(data / "raw" / "mnist")
    shutil.rmtree(data / "prepared")
    shutil.rmtree(repo / ".dvc" / "cache")
    dvc(repo, "pull", *DATA_STAGES)
    assert tree_digest(data) == before
    assert "up to date" in dvc(repo, "status", *DATA_STAGES)

    # After a pull, `auto` keeps the pulled files instead of fetching (the mirror is never asked).
    result = fetch_dataset(
        dataset="mnist", source="auto", raw_dir=data / "raw", mirrors=["http://127.0.0.1:9/"]
    )
    assert result.kept_existing and tree_digest(data) == before


@pytest.mark.slow
def test_make_repro_runs_the_stages_without_an_activated_venv(dvc_repo: Path) -> None:
    """The stages call `vaegan`: `.venv/bin/dvc repro` from a shell without the venv on PATH fails
    with exit 127 (issue 13 item 13); `make repro` puts the venv's scripts on PATH for them."""
    for name in ("Makefile", "requirements.lock", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, dvc_repo / name)
        os.utime(dvc_repo / name, (0, 0))  # older than the venv's .installed: `setup` is up to date
    venv = BIN.parent
    assert (venv / ".installed").is_file(), "the tests run in the venv that `make setup` built"
    bare = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    bare["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    bare["DVC_NO_ANALYTICS"] = "1"
    plain = subprocess.run(
        [str(BIN / "dvc"), "repro", "fetch"], cwd=dvc_repo, env=bare, capture_output=True, text=True
    )
    assert plain.returncode != 0 and "127" in plain.stdout + plain.stderr
    made = subprocess.run(
        ["make", f"VENV={venv}", "repro", "STAGES=prepare"],
        cwd=dvc_repo,
        env=bare,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert (dvc_repo / "data" / "prepared" / "train-images.npy").is_file()
    assert (dvc_repo / "dvc.lock").is_file()
