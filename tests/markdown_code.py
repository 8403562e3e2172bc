"""Run the ```python blocks of a documentation page exactly as printed, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    """The python code blocks of ``docs/<page>``, verbatim."""
    return _BLOCK.findall((REPO / "docs" / page).read_text())


def run_page(page: str, namespace: dict | None = None, blocks: slice = slice(None)) -> dict:
    """Execute the page's python blocks (all, or the ``blocks`` slice) in ``namespace``; return it."""
    found = python_blocks(page)
    assert found, f"docs/{page} has no python block"
    namespace = {"__name__": f"docs_{Path(page).stem}"} if namespace is None else namespace
    for number, code in list(enumerate(found, 1))[blocks]:
        exec(compile(code, f"docs/{page} (block {number})", "exec"), namespace)
    return namespace
