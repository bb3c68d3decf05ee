"""The package's layers hold: every module imports only its own layer and those listed before it (the
order README's layout gives), never one above, so the engine can be used without the command line and
no import cycle can form. The imports are read from the source (inside functions too), not run."""

from __future__ import annotations

import ast
from pathlib import Path

import perk_cli

# Lowest first: a module may import its own layer and the ones before it.
LAYERS = [
    "perk_cli",  # __version__ only
    "perk_cli.errors",
    "perk_cli.config",
    "perk_cli.files",
    "perk_cli.engine",
    "perk_cli.data",
    "perk_cli.models",
    "perk_cli.prepare",
    "perk_cli.prompts",
    "perk_cli.checkpoint",
    "perk_cli.scores",
    "perk_cli.memory",
    "perk_cli.training",
    "perk_cli.evaluation",
    "perk_cli.demo",
    "perk_cli.serve",
    "perk_cli.cli",
]
PACKAGE = Path(perk_cli.__file__).parent


def layer_of(module: str) -> int:
    matches = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS and README's layout"
    return max(matches)  # the most specific prefix


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the package in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "perk_cli"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "perk_cli":
            found.append((node.lineno, node.module))
            # `from perk_cli.data import babi` imports the submodule: its layer is the package's
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if (PACKAGE.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists()
                      or (PACKAGE.parent / node.module.replace(".", "/") / alias.name).is_dir()]
    return found


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = module_name(path)
        for line, imported in package_imports(path):
            if layer_of(imported) > layer_of(own):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[layer_of(own)]}) imports {imported} "
                             f"({LAYERS[layer_of(imported)]})")
    return wrong


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_every_module_and_subpackage_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from perk_cli.memory import Memory\n    from perk_cli import config\n")
    imports = package_imports(path)
    assert (2, "perk_cli.memory") in imports and (3, "perk_cli") in imports
    assert layer_of("perk_cli.memory") > layer_of("perk_cli.engine.bad")
    assert layer_of("perk_cli.config") < layer_of("perk_cli.engine.bad")


def test_the_layers_are_those_the_library_guide_lists():
    """docs/library.md's layout names each layer in this order, so the rule a contributor reads is the one
    tested."""
    guide = (PACKAGE.parent / "docs" / "library.md").read_text(encoding="utf-8")
    layout = guide[guide.index("## Layout"):]
    names = [name.removeprefix("perk_cli.") for name in LAYERS[1:]]
    positions = [layout.index("  " + name + ("/" if (PACKAGE / name).is_dir() else ".py")) for name in names]
    assert positions == sorted(positions)
