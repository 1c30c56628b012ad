"""The layering in ARCHITECTURE.md, enforced: import contracts, module and function sizes.

The import contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are checked by the
real ``lint-imports`` (import-linter) over the installed packages; the size limits are the ones
ARCHITECTURE.md states for production code.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dataprep", "model", "pipelines", "jobs")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# The build and loader paths, where a long function hides the per-sample work.
SHORT_FUNCTION_PATHS = ("dataprep/build", "dataprep/loader", "dataprep/process.py")


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (it is in the [test] extra)"
    proc = subprocess.run(
        [exe, "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_import_contracts_catch_a_forbidden_import(tmp_path: Path):
    """The contracts are not vacuous: a data-layer module importing ``model`` breaks them."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = [c for c in cfg["contracts"] if c.get("type") == "forbidden"]
    data_to_model = [c for c in forbidden if "model" in c.get("forbidden_modules", [])]
    assert data_to_model, "no contract forbids the data layers from importing model"
    assert "dataprep.core" in data_to_model[0]["source_modules"]


def test_every_library_module_sits_in_a_layer():
    """A new dataprep subpackage must be placed in the layers contract, not float outside it."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {
        name.strip()
        for c in cfg["contracts"]
        if c.get("type") == "layers" and c.get("containers") == ["dataprep"]
        for layer in c["layers"]
        for name in layer.replace("|", ":").split(":")
    }
    children = {
        p.stem if p.is_file() else p.name
        for p in (REPO / "dataprep").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert children <= layered, f"not in any layer: {sorted(children - layered)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_size(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {n} lines"


def test_function_size_in_build_and_loader_paths():
    long = []
    for rel in SHORT_FUNCTION_PATHS:
        root = REPO / rel
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n})")
    assert not long, "functions over the limit: " + ", ".join(long)


def test_entry_scripts_do_not_edit_sys_path():
    """The package is installed by make; an entry script that edits sys.path hides that."""
    offenders = [
        str(p.relative_to(REPO))
        for pkg in ("pipelines", "jobs")
        for p in sorted((REPO / pkg).glob("*.py"))
        if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()
    ]
    assert not offenders, offenders
