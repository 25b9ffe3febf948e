"""The tree's architecture holds: imports point one way (import-linter's contracts in pyproject.toml),
and what ships (the distribution, the frontend image) carries no benchmark code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
import tomllib

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, to break on purpose."""
    for package in ("openpi_triton", "openpi_policy", "benchmarks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path, so it analyses the copy.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_its_contracts(tree: Path):
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, backwards_import, contract", [
    ("openpi_triton/triton/tensors.py", "import openpi_triton.front.app", "openpi_triton layers"),
    ("openpi_triton/config.py", "import openpi_triton.triton.policy", "openpi_triton layers"),
    ("openpi_triton/front/codec.py", "import openpi_triton.loadgen.stats", "openpi_triton layers"),
    ("openpi_triton/check.py", "import openpi_triton.cli", "openpi_triton layers"),
    ("openpi_policy/transforms.py", "import openpi_triton.config", "openpi_policy runs inside Triton"),
    ("openpi_triton/front/app.py", "import benchmarks.servers", "nothing imports the benchmarks"),
    ("openpi_triton/front/session.py", "import tritonclient.grpc.aio", "the front speaks to its backend"),
    # indirectly: the front reads policies, and a policy that pulled in the gRPC client would drag it along
    ("openpi_triton/triton/policy.py", "import openpi_triton.triton.client", "the front speaks to its backend"),
    ("openpi_triton/triton/repository.py", "import openpi_policy.core", "serving imports no policy runtime"),
    ("openpi_triton/front/observations.py", "import torch", "serving imports no policy runtime"),
])
def test_a_backwards_import_breaks_a_contract(tree: Path, module: str, backwards_import: str, contract: str):
    path = tree / module
    path.write_text(path.read_text() + f"\n{backwards_import}  # deliberately backwards\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line or line.startswith(contract)]
    assert any(contract in line for line in broken), result.stdout


def test_no_module_imports_itself_through_others():
    """No import cycle between two modules of our packages (a module that imports one which, directly or
    further down, imports it back: neither can be read, tested or moved alone)."""
    import grimp

    graph = grimp.build_graph("openpi_triton", "openpi_policy", cache_dir=None)
    cycles = {tuple(sorted((module, imported))) for module in graph.modules
              for imported in graph.find_modules_directly_imported_by(module)
              if imported in graph.modules and graph.find_shortest_chain(importer=imported, imported=module)}
    assert not cycles, sorted(cycles)


def test_no_module_over_300_lines():
    long = {str(path.relative_to(ROOT)): lines for path in (ROOT / "openpi_triton").rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > 300}
    assert not long, long


def test_the_distribution_ships_no_benchmarks():
    """The packages setuptools puts in the wheel (what `pip install` and the frontend image install)."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(str(ROOT), include=find["include"])
    assert {"openpi_triton", "openpi_triton.front", "openpi_triton.triton", "openpi_policy"} <= set(packages)
    assert not [p for p in packages if p.split(".")[0] in ("benchmarks", "tests", "frontend")], packages


def test_the_frontend_image_copies_no_benchmarks():
    copies = [line.split()[1:-1] for line in (ROOT / "docker" / "frontend.Dockerfile").read_text().splitlines()
              if line.startswith("COPY")]
    sources = {source for words in copies for source in words}
    assert "openpi_triton" in sources
    assert not {"benchmarks", "tests"} & sources, sources
