"""The analysts' notebook: committed without outputs, one parameters cell, the package's code (not a copy),
and an execution top to bottom on the shared sample (FRUITS_DATA) that must not raise."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
from pathlib import Path

import pytest

from scripts.notebooks import main as notebooks_main
from scripts.notebooks import problems, strip

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "fruits_chain.ipynb"
PARAMETERS = ("INPUT", "OUTPUT", "SAMPLE_SIZE", "RUN_JOB", "EXPLORE", "WEIGHTS", "ENGINE", "FRUITS_ZIP")


def _cells(kind: str) -> list[dict]:
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return [cell for cell in document["cells"] if cell["cell_type"] == kind]


def _python(cell: dict) -> str:
    """A code cell's source with IPython line magics (``%matplot plt``) commented out, so ``ast`` can read it."""
    return re.sub(r"^(\s*)%", r"\1# %", "".join(cell["source"]), flags=re.MULTILINE)


@pytest.mark.parametrize("path", sorted((REPO / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs_and_no_execution_counts(path):
    assert problems(path) == []


def test_the_check_finds_outputs_and_strip_removes_them(tmp_path):
    dirty = tmp_path / "dirty.ipynb"
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    executed = next(cell for cell in document["cells"] if cell["cell_type"] == "code")
    executed["execution_count"] = 3
    executed["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["secret path\n"]}]
    dirty.write_text(json.dumps(document), encoding="utf-8")

    assert len(problems(dirty)) == 2
    assert notebooks_main(["check", str(dirty)]) == 1
    assert strip(dirty) is True
    assert problems(dirty) == []
    assert notebooks_main(["check", str(dirty)]) == 0
    assert strip(dirty) is False  # stripping a clean notebook leaves the file as it is


def test_one_parameters_cell_sets_input_output_and_sample_size():
    tagged = [cell for cell in _cells("code") if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1, "papermill (and EMR Studio's parameterized runs) need exactly one tagged cell"
    assigned = {
        target.id
        for node in ast.parse(_python(tagged[0])).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert set(PARAMETERS) <= assigned


def test_the_notebook_uses_the_package_and_copies_none_of_its_functions():
    trees = [ast.parse(_python(cell)) for cell in _cells("code")]
    imported = {
        node.module
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    for module in ("fruits.listing", "fruits.decoding", "fruits.model_export", "fruits.reduce", "fruits.job"):
        assert module in imported or module.rsplit(".", 1)[-1] in _names_from(trees, "fruits"), module
    assert {"fruits.storage", "fruits.reading"} <= imported

    import fruits

    package_functions = set()
    for info in pkgutil.walk_packages(fruits.__path__, "fruits."):
        if info.name.startswith("fruits.ops"):
            continue
        module = importlib.import_module(info.name)
        package_functions |= {name for name, value in vars(module).items() if callable(value)}
    defined = {node.name for tree in trees for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert not defined & package_functions, "the notebook redefines the package's functions"


def _names_from(trees: list[ast.Module], module: str) -> set[str]:
    return {
        alias.name
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == module
        for alias in node.names
    }


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.realdata
def test_the_notebook_runs_top_to_bottom_on_the_shared_sample(tmp_path):
    if not os.environ.get("FRUITS_DATA"):
        pytest.skip("FRUITS_DATA is not set: the notebook runs on the shared Fruits-360 sample")
    import papermill

    executed = tmp_path / "fruits_chain.ipynb"
    output = tmp_path / "run"
    # Raises PapermillExecutionError, naming the cell, on any error in any cell.
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"OUTPUT": str(output), "SAMPLE_SIZE": 24, "NEIGHBOURS": 4},
        cwd=str(REPO),
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
    )
    document = json.loads(executed.read_text(encoding="utf-8"))
    code = [cell for cell in document["cells"] if cell["cell_type"] == "code"]
    assert not [o for cell in code for o in cell.get("outputs", []) if o["output_type"] == "error"]
    images = [o for cell in code for o in cell["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # decoded images, a feature vector, two curves, scatter, accuracy, neighbours
    text = "".join(
        "".join(o.get("text", "")) for cell in code for o in cell["outputs"] if o["output_type"] == "stream"
    )
    assert "24 images read" in text
    assert "per-class test accuracy (shrinkage LDA" in text  # from the manifest's quality report
    # The whole job published a run where the notebook said, and part 2 explored that very run.
    commit = json.loads((output / "_commits" / "00000001.json").read_text())
    assert f"run {commit['run_id']}" in text
    assert (output / "results.csv").is_file()
