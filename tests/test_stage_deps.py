"""dvc.yaml's code deps are each stage's import closure (the guard), the closure itself on a tiny
package with a known answer, and tools/stage_deps.py's rewrite of a dvc.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from tools.stage_deps import differences, expected_code_deps, listed_code_deps, main
from vaegan.artifacts.code_closure import command_closure, command_modules, import_closure, package_dir
from vaegan.cli import COMMANDS
from vaegan.nn.resume import training_code


def test_dvc_yaml_code_deps_are_the_import_closure_of_each_stage() -> None:
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    expected = expected_code_deps(pipeline)
    vaegan_stages = {name for name, stage in pipeline["stages"].items() if stage["cmd"].startswith("vaegan ")}
    assert set(expected) == vaegan_stages
    found = differences(listed_code_deps(pipeline), expected)
    assert found == [], "\n".join([*found, "run `python tools/stage_deps.py --write`"])
    # The resume key hashes the files the train stages depend on.
    train_code = [f"src/vaegan/{name}" for name in training_code()]
    assert train_code == expected["train"] == expected["train-baseline"]
    assert "src/vaegan/train.py" in expected["train"] and "src/vaegan/nn/step.py" in expected["train"]


def test_commands_read_from_cli_source_match_the_imported_table() -> None:
    assert command_modules(package_dir()) == {c.name: c.target.split(":")[0] for c in COMMANDS}


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


FAKE = {
    "__init__.py": '"""The package."""\n',
    "cli.py": """\
        from dataclasses import dataclass

        @dataclass
        class Command:
            name: str
            target: str

        COMMANDS: tuple[Command, ...] = (
            Command("go", "fakepkg.stage:run"),
            Command(name="lone", target="fakepkg.lone:run"),
        )
        """,
    "stage.py": """\
        import os
        from typing import TYPE_CHECKING

        import fakepkg.deep.mod as mod
        from fakepkg import util
        from fakepkg.shared import CONSTANT

        if TYPE_CHECKING:
            from fakepkg.typing_only import Hint

        def run():
            from fakepkg.lazy import later  # function level
            return later
        """,
    "util.py": "from . import rel\nfrom .deep import mod\n",
    "rel.py": "import fakepkg.stage  # a cycle back to the start\n",
    "lazy.py": "later = 1\n",
    "typing_only.py": "Hint = int\n",
    "shared/__init__.py": "CONSTANT = 1\n",
    "shared/unused.py": "",
    "deep/__init__.py": "",
    "deep/mod.py": "import json\n",
    "lone.py": "x = 1\n",
    "unrelated.py": "import fakepkg.stage\n",
}


def test_closure_of_a_tiny_package_is_known(tmp_path: Path) -> None:
    root = write_package(tmp_path / "fakepkg", FAKE)
    assert command_modules(root) == {"go": "fakepkg.stage", "lone": "fakepkg.lone"}
    assert [str(p) for p in command_closure("go", root)] == [
        "__init__.py",
        "deep/__init__.py",
        "deep/mod.py",
        "lazy.py",
        "rel.py",
        "shared/__init__.py",
        "stage.py",
        "typing_only.py",
        "util.py",
    ]
    assert [str(p) for p in command_closure("lone", root)] == ["__init__.py", "lone.py"]
    with pytest.raises(ValueError, match="no command 'nope'"):
        command_closure("nope", root)


def test_the_command_line_is_in_every_command_closure(tmp_path: Path) -> None:
    """`__main__.py` and cli.py, which parses the arguments and `--set` before the stage runs."""
    package = {**FAKE, "__main__.py": "from fakepkg.cli import Command\n"}
    root = write_package(tmp_path / "fakepkg", package)
    closure = [str(p) for p in command_closure("lone", root)]
    assert closure == ["__init__.py", "__main__.py", "cli.py", "lone.py"]
    assert {"__main__.py", "cli.py"} <= {str(p) for p in command_closure("go", root)}
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    for stage, deps in expected_code_deps(pipeline).items():
        assert {"src/vaegan/__main__.py", "src/vaegan/cli.py"} <= set(deps), stage


def test_an_import_of_a_missing_module_names_the_importer(tmp_path: Path) -> None:
    root = write_package(tmp_path / "fakepkg", {"__init__.py": "", "a.py": "from fakepkg.gone import x\n"})
    with pytest.raises(ValueError, match=r"fakepkg/a.py imports fakepkg.gone, which has no file"):
        import_closure(root, ["fakepkg.a"])


DVC_YAML = """\
# a comment that stays
stages:
  fetch:
    cmd: vaegan go
    deps:
      - data/input   # a data dep
      - src/vaegan/stage.py
      - src/vaegan/gone.py
      - src/vaegan/sample_data/set
    params:
      - data.seed
    outs:
      - data/out
  other:
    cmd: echo hello
    deps:
      - src/vaegan/stage.py
  lone:
    cmd: >-
      vaegan lone
      --set a.b=1
    deps:
      - data/out
"""

DVC_YAML_DERIVED = """\
# a comment that stays
stages:
  fetch:
    cmd: vaegan go
    deps:
      - data/input   # a data dep
      - src/vaegan/__init__.py
      - src/vaegan/stage.py
      - src/vaegan/sample_data/set
    params:
      - data.seed
    outs:
      - data/out
  other:
    cmd: echo hello
    deps:
      - src/vaegan/stage.py
  lone:
    cmd: >-
      vaegan lone
      --set a.b=1
    deps:
      - data/out
      - src/vaegan/__init__.py
      - src/vaegan/lone.py
"""


def test_tool_rewrites_only_the_code_deps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = {
        "__init__.py": "",
        "cli.py": 'COMMANDS = (Command("go", "vaegan.stage:run"), Command("lone", "vaegan.lone:run"))\n',
        "stage.py": "import os\n",
        "lone.py": "",
        "sample_data/set/data.bin": "",
    }
    write_package(tmp_path / "src" / "vaegan", package)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    assert main(["--check", "--repo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fetch: missing src/vaegan/__init__.py" in err and "fetch: extra src/vaegan/gone.py" in err
    assert "lone: missing src/vaegan/lone.py" in err and "other" not in err

    assert main(["--write", "--repo", str(tmp_path)]) == 0
    assert (tmp_path / "dvc.yaml").read_text(encoding="utf-8") == DVC_YAML_DERIVED
    assert main(["--check", "--repo", str(tmp_path)]) == 0
    assert main(["--write", "--repo", str(tmp_path)]) == 0
    assert (tmp_path / "dvc.yaml").read_text(encoding="utf-8") == DVC_YAML_DERIVED
