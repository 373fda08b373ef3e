"""The package's shape, as docs/DESIGN.md states it: stages in dependency order, thin CLIs,
short files.

Read from the source (every import statement, those inside functions too), so that a new import
that runs from a lower stage to a higher one, or a library that imports a CLI module, fails here
rather than in review.
"""

import ast
from pathlib import Path

import pytest

from helpers import REPO
PACKAGE = REPO / "fcn8s_tf"
CLIS = {"fcn8s_tf.train", "fcn8s_tf.evaluate", "fcn8s_tf.export", "fcn8s_tf.predict"}
# docs/DESIGN.md, "Stages and who owns what": a module imports only from its stage or lower ones.
STAGES = {
    "base": ["fcn8s_tf", "fcn8s_tf.class_info", "fcn8s_tf.render", "fcn8s_tf.protobuf",
             "fcn8s_tf.files", "fcn8s_tf.signals", "fcn8s_tf.precision", "fcn8s_tf.pixels",
             "fcn8s_tf.cli"],
    "data": ["fcn8s_tf.data"],
    "model": ["fcn8s_tf.model"],
    "serving": ["fcn8s_tf.serving"],
    "evaluation": ["fcn8s_tf.evaluation"],
    "training": ["fcn8s_tf.training", "fcn8s_tf.config", "fcn8s_tf.flags"],
    "cli": sorted(CLIS),
}
RANK = {stage: rank for rank, stage in enumerate(STAGES)}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    best = max(((prefix, stage) for stage, prefixes in STAGES.items() for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")),
               key=lambda found: len(found[0]), default=(None, None))
    if best[1] is None:
        raise AssertionError(f"{module} is in no stage of tests/test_layout.py's STAGES")
    return best[1]


def _imports(path: Path):
    """(line, imported fcn8s_tf module) for every import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from fcn8s_tf.x import y`: y may be a module (fcn8s_tf.x.y) or a name in fcn8s_tf.x
            names = [f"{node.module}.{alias.name}" if (PACKAGE.parent / node.module.replace(
                ".", "/") / alias.name).with_suffix(".py").exists()
                or (PACKAGE.parent / node.module.replace(".", "/") / alias.name).is_dir()
                else node.module for alias in node.names]
        else:
            continue
        for name in names:
            if name == "fcn8s_tf" or name.startswith("fcn8s_tf."):
                yield node.lineno, name


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_down_the_stages(path):
    module = _module_name(path)
    here = _stage(module)
    wrong = [f"line {line}: {name} ({_stage(name)})" for line, name in _imports(path)
             if RANK[_stage(name)] > RANK[here] or (name in CLIS and module != name)]
    assert not wrong, f"{module} ({here}) imports from a higher stage or a CLI: {wrong}"


def test_no_file_is_over_the_line_budget():
    long = {str(p.relative_to(REPO)): n for p in MODULES + sorted((REPO / "tools").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split by concern): {long}"


def test_no_module_re_exports_another_modules_names():
    # A package's __init__ holds a docstring at most: names are imported from where they live.
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert not imports, f"{init.relative_to(REPO)} imports (re-exports) names"


PROGRAMS = sorted([PACKAGE / f"{name.split('.')[-1]}.py" for name in CLIS]
                  + [p for p in (REPO / "tools").glob("*.py")])


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_program_defines_its_flags_and_exits_one_way(path):
    """Flags in define_flags() (none at import), started by cli.run, errors through cli.fail."""
    source = path.read_text()
    tree = ast.parse(source)
    at_import = [node.lineno for node in tree.body if isinstance(node, (ast.Expr, ast.Assign))
                 and "flags.DEFINE_" in ast.unparse(node)]
    assert not at_import, f"{path.name} defines flags at import (lines {at_import})"
    assert "cli.run(" in source, f"{path.name} does not start through fcn8s_tf/cli.py's run"
    assert "raise SystemExit(" not in source and "file=sys.stderr" not in source, \
        f"{path.name} exits with an error of its own making; use cli.fail or cli.stopped"
