"""The layout tells the data flow: the run store imports nothing above it, and no module of
the experiment's orchestration imports another in a circle (a cycle once tied the experiment,
the report and the worker processes together)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gradlab"


def gradlab_imports(module: str) -> set[str]:
    """The gradlab modules `module` imports, at the top or inside a function."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    package = module.rsplit(".", 1)[0] if "." in module and not path.name == "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                base = package.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("gradlab"):
                name = node.module.removeprefix("gradlab").lstrip(".")
            else:
                continue
            found.add(name.split(".")[0] if name else "")
            if not node.module:  # `from . import x, y`
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("gradlab.").split(".")[0] for a in node.names if a.name.startswith("gradlab")}
    return found - {"", module.split(".")[0]}


# Below the store: files, errors, records, the schema, the numerical environment and the
# names of grid points.
BELOW_THE_STORE = {"io", "errors", "records", "environment", "config", "points"}


def test_the_run_store_imports_nothing_above_it():
    assert gradlab_imports("store") <= BELOW_THE_STORE, gradlab_imports("store")
    for module in BELOW_THE_STORE - {"config"}:
        assert gradlab_imports(module) <= BELOW_THE_STORE, (module, gradlab_imports(module))


def test_no_cycle_between_the_experiment_the_report_and_the_executors():
    graph = {m: gradlab_imports(m) for m in ("experiment", "report", "executors", "cluster", "store", "suggest")}
    assert "experiment" not in graph["report"] | graph["executors"] | graph["cluster"] | graph["store"], graph
    assert "report" not in graph["executors"] | graph["cluster"] | graph["store"], graph


def test_the_report_reads_sweeps_and_grids_which_never_import_it():
    """The sweep's grouping (`sweeps`) and the grid's cells (`stability`) are read by the
    report and the plots alike; they once imported the report back from inside a function."""
    for module in ("sweeps", "stability"):
        assert "report" not in gradlab_imports(module), (module, gradlab_imports(module))
        assert "plots" not in gradlab_imports(module), (module, gradlab_imports(module))


def test_ci_and_the_readme_run_every_test_file_that_compares_with_torch():
    """The parity command names its files: one that compares with torch and is left off
    would be skipped in CI without anyone noticing."""
    root = PACKAGE.parent
    uses_torch = {f"tests/{p.name}" for p in (root / "tests").glob("test_*.py")
                  if "importorskip(" + '"torch")' in p.read_text()}  # spelt apart: not this file
    ci = next(line for line in (root / ".ci" / "run").read_text().splitlines() if "GRADLAB_REQUIRE_TORCH=1" in line)
    readme = next(line for line in (root / "README.md").read_text().splitlines()
                  if line.startswith("pip install torch") and "GRADLAB_REQUIRE_TORCH=1" in line)
    assert uses_torch and uses_torch <= set(ci.split()) and uses_torch <= set(readme.split()), uses_torch


def test_ci_and_the_readme_run_every_test_file_that_needs_dask():
    """The same for the cluster extra: a test file that needs Dask and is left off the command
    would be skipped in CI, where the first step runs without the extra."""
    root = PACKAGE.parent
    uses_dask = {f"tests/{p.name}" for p in (root / "tests").glob("test_*.py")
                 if "importorskip(" + '"distributed")' in p.read_text()}  # spelt apart: not this file
    ci = next(line for line in (root / ".ci" / "run").read_text().splitlines() if "GRADLAB_REQUIRE_DASK=1" in line)
    readme = next(line for line in (root / "README.md").read_text().splitlines()
                  if line.startswith('pip install -e ".[cluster]"') and "GRADLAB_REQUIRE_DASK=1" in line)
    assert uses_dask and uses_dask <= set(ci.split()) and uses_dask <= set(readme.split()), uses_dask
    assert ci == readme  # the very command the README gives
