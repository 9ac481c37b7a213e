"""Notebooks are committed without outputs: ``check`` says which cells carry some, ``strip`` removes them.

    python scripts/notebooks.py check [notebooks/*.ipynb]   # exit 1 and one line per offending cell
    python scripts/notebooks.py strip [notebooks/*.ipynb]   # clear outputs and execution counts in place

Why: outputs hold images, paths of one machine and run ids that change on every run; committed, they make every
review a binary diff and can leak what an analyst's run read. The executed copy belongs in ``out/notebook/``
(``make notebook``). Plain JSON, so neither Jupyter nor nbformat is needed to run it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def problems(path: Path) -> list[str]:
    """One line per code cell of ``path`` that has outputs or an execution count (empty: the file is clean)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for index, cell in enumerate(document.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            found.append(f"{path.name}: cell {index} has {len(cell['outputs'])} outputs")
        if cell.get("execution_count") is not None:
            found.append(f"{path.name}: cell {index} has execution count {cell['execution_count']}")
    return found


def strip(path: Path) -> bool:
    """Clear every code cell's outputs and execution count in place; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    document = json.loads(text)
    for cell in document.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    # nbformat's own layout (one-space indent, keys sorted), so a stripped file diffs cleanly against Jupyter's.
    stripped = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if stripped != text:
        path.write_text(stripped, encoding="utf-8")
        return True
    return False


def notebook_paths(arguments: Iterable[str]) -> list[Path]:
    """The paths given, or every ``notebooks/*.ipynb``."""
    given = [Path(argument) for argument in arguments]
    return given or sorted(NOTEBOOKS.glob("*.ipynb"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("check", "strip"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    paths = notebook_paths(argv[1:])
    if argv[0] == "strip":
        for path in paths:
            if strip(path):
                print(f"stripped {path}")
        return 0
    lines = [line for path in paths for line in problems(path)]
    for line in lines:
        print(line)
    if lines:
        print("commit notebooks without outputs: python scripts/notebooks.py strip", file=sys.stderr)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
