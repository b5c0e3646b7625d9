"""dvc.yaml's code deps derived from the code: each stage that runs `vaegan <command>` depends on
the files of that command's import closure (`vaegan.artifacts.code_closure`), no more, no less.

python tools/stage_deps.py --check  # exit 1 and print the differences when dvc.yaml disagrees
python tools/stage_deps.py --write  # rewrite the `src/vaegan/` code deps of each stage in place

Only the code deps are touched: the lines `- src/vaegan/<file>.py` of each stage's `deps:` list are
replaced, in place of the first of them, by the closure in sorted order. Other deps, package data a
module reads (`src/vaegan/sample_data/mnist` of fetch: not a module, so never derived, kept as
written), params, outs, comments and layout stay as they are.

Files, not folders: a sub-package is never collapsed into one folder dep, even when all its files
are in the closure. DVC hashes every file under a folder dep, `__pycache__/*.pyc` included (it reads
.dvcignore, not .gitignore): the first import under another Python, or a fresh clone, would mark
the stage changed. A file list also says in review which modules a stage runs, and it does not
flip between a folder and a list when one file of a sub-package enters or leaves the closure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from vaegan.artifacts.atomic_io import write_text
from vaegan.artifacts.code_closure import command_closure

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PREFIX = "src/vaegan/"


def is_code_dep(dep: str, repo_root: Path = ROOT) -> bool:
    """True for a dep that names package code (a .py file, or a folder holding .py files)."""
    if not dep.startswith(PACKAGE_PREFIX):
        return False
    path = repo_root / dep
    return dep.endswith(".py") or (path.is_dir() and any(path.rglob("*.py")))


def stage_commands(pipeline: Mapping[str, object]) -> dict[str, str]:
    """`stage -> vaegan command` for every stage whose cmd is `vaegan <command> ...`."""
    stages = pipeline.get("stages") or {}
    assert isinstance(stages, dict)
    commands = {}
    for name, stage in stages.items():
        words = str(stage.get("cmd", "")).split()
        if len(words) >= 2 and words[0] == "vaegan":
            commands[name] = words[1]
    return commands


def expected_code_deps(pipeline: Mapping[str, object], repo_root: Path = ROOT) -> dict[str, list[str]]:
    """`stage -> the dvc.yaml paths of its command's import closure`, sorted."""
    package = repo_root / PACKAGE_PREFIX
    return {
        stage: [f"{PACKAGE_PREFIX}{path}" for path in command_closure(command, package)]
        for stage, command in stage_commands(pipeline).items()
    }


def listed_code_deps(pipeline: Mapping[str, object], repo_root: Path = ROOT) -> dict[str, list[str]]:
    """`stage -> its code deps as dvc.yaml lists them`, for the stages that run a vaegan command."""
    stages = pipeline.get("stages") or {}
    assert isinstance(stages, dict)
    listed = {}
    for stage in stage_commands(pipeline):
        deps = stages[stage].get("deps", [])
        listed[stage] = [dep for dep in deps if isinstance(dep, str) and is_code_dep(dep, repo_root)]
    return listed


def differences(listed: Mapping[str, list[str]], expected: Mapping[str, list[str]]) -> list[str]:
    """`stage: missing <dep>` / `stage: extra <dep>` lines, empty when the two agree as sets."""
    lines = []
    for stage, deps in expected.items():
        have = set(listed.get(stage, []))
        lines += [f"{stage}: missing {dep} (the stage imports it)" for dep in deps if dep not in have]
        lines += [f"{stage}: extra {dep} (the stage does not import it)" for dep in sorted(have - set(deps))]
    return lines


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rewrite(text: str, expected: Mapping[str, Sequence[str]], repo_root: Path = ROOT) -> str:
    """dvc.yaml's text with each stage's code deps replaced by `expected[stage]`, nothing else changed.

    The new list takes the place of the first code dep (after the last dep when there is none).
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    in_stages, stage, i = False, "", 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and _indent(line) == 0:
            in_stages, stage = stripped == "stages:", ""
        elif in_stages and stripped and not stripped.startswith("#") and _indent(line) == 2:
            stage = stripped.rstrip(":")
        out.append(line)
        i += 1
        if stage in expected and stripped == "deps:":
            key_indent = _indent(line)
            block: list[str] = []
            while i < len(lines) and _in_block(lines[i], key_indent):
                block.append(lines[i])
                i += 1
            out += _rewrite_deps(block, expected[stage], repo_root)
    return "".join(out)


def _in_block(line: str, key_indent: int) -> bool:
    """Whether `line` belongs to the list under a key indented by `key_indent`."""
    stripped = line.strip()
    return not stripped or _indent(line) > key_indent or (_indent(line) == key_indent and stripped[0] == "-")


def _list_item(line: str) -> str | None:
    stripped = line.strip()
    return stripped[1:].split(" #")[0].strip() if stripped.startswith("-") else None


def _rewrite_deps(block: list[str], deps: Sequence[str], repo_root: Path) -> list[str]:
    """The lines of one deps list with its code deps replaced by `deps`."""
    items = [k for k, line in enumerate(block) if _list_item(line) is not None]
    item_indent = _indent(block[items[0]]) if items else 6
    new = [f"{' ' * item_indent}- {dep}\n" for dep in deps]
    out: list[str] = []
    placed = False
    for line in block:
        item = _list_item(line)
        if item is not None and _indent(line) == item_indent and is_code_dep(item, repo_root):
            if not placed:
                out += new
                placed = True
            continue
        out.append(line)
    if not placed:
        last_item = max((k for k, line in enumerate(out) if _list_item(line) is not None), default=-1)
        out[last_item + 1 : last_item + 1] = new
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml's code deps differ")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    dvc_yaml = args.repo / "dvc.yaml"
    text = dvc_yaml.read_text(encoding="utf-8")
    pipeline = yaml.safe_load(text)
    expected = expected_code_deps(pipeline, args.repo)
    found = differences(listed_code_deps(pipeline, args.repo), expected)
    if args.check:
        for line in found:
            print(f"{dvc_yaml}: {line}", file=sys.stderr)
        if found:
            print("run `python tools/stage_deps.py --write` to derive them", file=sys.stderr)
        return 1 if found else 0
    new_text = rewrite(text, expected, args.repo)
    if new_text != text:
        write_text(dvc_yaml, new_text)
        print(f"rewrote the code deps of {dvc_yaml} ({len(found)} differences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
