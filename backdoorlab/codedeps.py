"""Each stage's code dependencies: exactly the project modules its command imports, transitively.

    python -m backdoorlab.codedeps --check dvc.yaml   # exit 1 and name the stages whose deps are wrong
    python -m backdoorlab.codedeps --write dvc.yaml   # rewrite the code deps in place (`make pipelines`)

Imports are read from the source (every `import` statement, including those inside
functions, since they run when the function does), so the result does not depend on
what a run happened to execute. Registries import attacks and defenses by name; a
stage whose command names an attack or a defense also depends on that one's module
and what it imports, and on no other. A package's __init__ counts for every module
inside it, since Python runs it first. Data deps (anything outside the code folders)
are left as they are; comments and layout of dvc.yaml are kept.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGES = ("backdoorlab", "stages")


def module_file(module: str, root: Path) -> Path | None:
    """backdoorlab.attacks.base -> backdoorlab/attacks/base.py (or .../__init__.py); None if not ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str, root: Path) -> set[str]:
    """The project modules `module` imports directly (anywhere in its source), with their parent packages."""
    path = module_file(module, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
        else:
            continue
        for name in names:
            if module_file(name, root) is not None:
                found.add(name)
    return {parent for name in found for parent in _with_parents(name)} - {module}


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(modules: list[str], root: Path) -> set[str]:
    """Every project module that importing `modules` runs."""
    todo = [p for m in modules for p in _with_parents(m)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        todo.extend(imported_modules(module, root))
    return seen


def command_modules(command: str, root: Path) -> list[str]:
    """`python -m stages.poison badnets` -> the stage module, plus the registered attack or defense it names."""
    sys.path.insert(0, str(root))
    try:
        from backdoorlab.attacks import ATTACKS, attack_module
        from backdoorlab.defenses import DEFENSES, defense_module
    finally:
        sys.path.pop(0)
    words = command.split()
    modules = [words[words.index("-m") + 1]]
    for word in words[words.index("-m") + 2:]:
        if word in ATTACKS:
            modules.append(attack_module(word))
        elif word in DEFENSES:
            modules.append(defense_module(word))
    return modules


def code_deps(command: str, root: Path) -> list[str]:
    """The files (relative to root, sorted) a stage command runs."""
    files = {module_file(m, root).relative_to(root).as_posix() for m in closure(command_modules(command, root), root)}
    return sorted(files)


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES and dep.endswith(".py")


def expected_deps(stage: dict, root: Path) -> list[str]:
    data = [d for d in stage.get("deps", []) if not is_code(str(d))]
    return data + code_deps(stage["cmd"], root)


def check(pipeline: Path, root: Path) -> list[str]:
    """Stages whose declared deps differ from their data deps plus their code deps."""
    import yaml

    stages = yaml.safe_load(pipeline.read_text())["stages"]
    wrong = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        declared = [str(d) for d in body.get("deps", [])]
        if sorted(declared) != sorted(expected_deps(body, root)):
            wrong.append(name)
    return wrong


def write(pipeline: Path, root: Path) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    tree = yaml.load(pipeline.read_text())
    for stage in tree["stages"].values():
        body = stage.get("do", stage)
        deps = body.get("deps")
        wanted = expected_deps(body, root)
        if deps is None:
            body["deps"] = wanted
            continue
        deps[:] = wanted
    with open(pipeline, "w") as out:
        yaml.dump(tree, out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.codedeps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 if any stage's code deps are wrong")
    action.add_argument("--write", action="store_true", help="rewrite the code deps in place")
    parser.add_argument("pipeline", type=Path, nargs="?", default=Path("dvc.yaml"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    if args.write:
        write(args.pipeline, root)
    wrong = check(args.pipeline, root)
    if wrong:
        print(f"{args.pipeline}: code deps out of date for {', '.join(wrong)}; run `make pipelines`",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
