"""The code a `vaegan` command runs: the import closure of its stage module, read with `ast`.

A command's closure starts at the module cli.py's `COMMANDS` maps it to and follows every
`import vaegan...` and `from vaegan... import ...` statement, wherever it stands (module level,
function level, under `if TYPE_CHECKING:`), to the modules they name:

- `from vaegan.pkg import name` counts as the submodule `vaegan.pkg.name` when that is a module,
  else as the package `vaegan.pkg` (its `__init__.py`);
- importing `vaegan.a.b` runs `vaegan/__init__.py` and `vaegan/a/__init__.py` first, so every
  package above a module in the closure is in it too;
- a `TYPE_CHECKING` import does not run, but it names what a module is written against (the
  `Config` whose defaults fill in what params.yaml leaves out): a dep listed too many costs a
  re-run, one missing costs a stale result, so the closure errs on the side of listing.

The command line is in every command's closure: `__main__.py` (`python -m vaegan`) and what it
imports, cli.py (the `vaegan` script runs the same `cli.main`), which parses the arguments and the
`--set` overrides before it dispatches to the stage; a change to how params are parsed reruns every
stage. cli.py's `COMMANDS` table is read as text, not followed: it names every stage module.

One source for two users: tools/stage_deps.py writes each DVC stage's code deps from it, and
`vaegan.nn.resume.training_code_sha256` hashes the train command's closure.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from importlib import resources
from pathlib import Path, PurePosixPath

PACKAGE = "vaegan"


def package_dir() -> Path:
    """The directory of the installed vaegan package (src/vaegan/ under an editable install)."""
    return Path(str(resources.files(PACKAGE)))


def module_file(root: Path, module: str) -> Path | None:
    """The file of `module` (`<root.name>.a.b`) under the package directory `root`:
    `a/b.py` or `a/b/__init__.py`; None when there is neither."""
    parts = module.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py") if len(parts) > 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _is_module(root: Path, module: str) -> bool:
    return module_file(root, module) is not None


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of `from <level dots><name> import ...` written in `module`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, name] if name else base)


def imported_modules(root: Path, path: Path) -> set[str]:
    """The package's modules that the import statements of file `path` (under `root`) name."""
    package = root.name
    relative = path.relative_to(root).with_suffix("")
    is_package = relative.name == "__init__"
    parts = relative.parts[:-1] if is_package else relative.parts
    module = ".".join([package, *parts])
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if alias.name != "*" and _is_module(root, submodule) else base)
    return {name for name in found if name == package or name.startswith(f"{package}.")}


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(root: Path, modules: Iterable[str]) -> tuple[PurePosixPath, ...]:
    """The files of `modules` and of every module of the package they import, transitively, with
    the `__init__.py` of each package on the way; relative to `root`, sorted.

    An import of a module of the package that has no file is a `ValueError` naming the importer.
    """
    seen: set[Path] = set()
    pending: list[tuple[str, str]] = [(name, "the start") for name in modules]
    while pending:
        name, importer = pending.pop()
        for module in _with_parents(name):
            path = module_file(root, module)
            if path is None:
                raise ValueError(f"{importer} imports {module}, which has no file under {root}")
            if path in seen:
                continue
            seen.add(path)
            where = str(PurePosixPath(root.name, path.relative_to(root).as_posix()))
            pending.extend((found, where) for found in sorted(imported_modules(root, path)))
    return tuple(sorted(PurePosixPath(path.relative_to(root).as_posix()) for path in seen))


def command_modules(root: Path) -> dict[str, str]:
    """`command -> module` from the `COMMANDS` table of the package's cli.py, read with `ast`.

    Each entry is a `Command(name, "module:function", ...)` call (name and target positional or as
    keywords `name=`, `target=`); anything else is a `ValueError`.
    """
    cli = root / "cli.py"
    tree = ast.parse(cli.read_text(encoding="utf-8"), filename=str(cli))
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if (
            isinstance(target, ast.Name)
            and target.id == "COMMANDS"
            and isinstance(value, (ast.Tuple, ast.List))
        ):
            return dict(_command_entry(cli, entry) for entry in value.elts)
    raise ValueError(f"{cli}: no COMMANDS = (Command(...), ...) table at module level")


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _command_entry(cli: Path, entry: ast.expr) -> tuple[str, str]:
    if isinstance(entry, ast.Call):
        keywords = {k.arg: k.value for k in entry.keywords if k.arg}
        args = [*entry.args[:2], None, None]
        name = _string(args[0]) or _string(keywords.get("name"))
        target = _string(args[1]) or _string(keywords.get("target"))
        if name and target and ":" in target:
            return name, target.split(":")[0]
    raise ValueError(
        f"{cli}:{entry.lineno}: a COMMANDS entry that is not Command(name, 'module:function', ...)"
    )


def command_closure(command: str, root: Path | None = None) -> tuple[PurePosixPath, ...]:
    """The package files `vaegan <command>` runs: the stage module's closure and the command line's
    (`__main__.py` and what it imports, where the package has one); relative to the package
    directory, sorted."""
    root = package_dir() if root is None else root
    modules = command_modules(root)
    if command not in modules:
        raise ValueError(f"{root / 'cli.py'}: no command {command!r} in COMMANDS ({', '.join(modules)})")
    entry = f"{root.name}.__main__"
    return import_closure(root, [modules[command], *([entry] if _is_module(root, entry) else [])])
