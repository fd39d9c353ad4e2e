"""Project conventions that a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_says_what_it_proves() -> None:
    """Every test function in tests/ has a one-line docstring."""
    missing = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                doc = ast.get_docstring(node)
                if not doc or "\n" in doc.strip():
                    missing.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert missing == []


def test_protocol_layer_imports_no_io() -> None:
    """Importing the pure protocol layer loads no asyncio, aiohttp or socket module."""
    code = (
        "import sys; import roomcast.protocol.session, roomcast.protocol.messages;"
        "bad = [m for m in ('asyncio', 'aiohttp', 'socket', 'websockets') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
