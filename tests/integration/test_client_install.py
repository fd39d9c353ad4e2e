"""The client distribution (client/pyproject.toml) installs light.

`pip install ./client` in a fresh virtual environment gives a working
``roomcast.client`` and brings none of the server's web stack, database or
broker drivers. It downloads websockets, orjson, prompt_toolkit and the
build backend (hatchling) from PyPI, or takes them from pip's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Import names of the root distribution's dependencies the client must not bring.
SERVER_DEPENDENCIES = (
    "aiohttp",
    "picows",
    "asyncpg",
    "redis",
    "argon2",
    "jwt",
    "prometheus_client",
    "uvloop",
)

#: Run by the fresh environment's interpreter; prints what it found as JSON.
CHECK = f"""
import importlib.util, json, pathlib
import roomcast, roomcast.client
from roomcast.client import Client
import roomcast.client.terminal
package = pathlib.Path(roomcast.__file__).parent
print(json.dumps({{
    "package": str(package),
    "client": sorted(p.name for p in (package / "client").glob("*.py")),
    "modules": sorted(str(p.relative_to(package)) for p in package.rglob("*.py")),
    "present": [m for m in {SERVER_DEPENDENCIES!r} if importlib.util.find_spec(m) is not None],
    "client_class": Client.__module__,
}}))
"""


@pytest.mark.timeout(240)
def test_pip_install_client_brings_the_client_and_none_of_the_server(tmp_path: Path) -> None:
    """`pip install ./client` in a new venv imports roomcast.client and lacks the server's deps."""
    hidden = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env["PIP_NO_INPUT"] = "1"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60, env=env)
    python = venv / "bin" / "python"

    pip = subprocess.run(
        [venv / "bin" / "pip", "install", "--disable-pip-version-check", str(ROOT / "client")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert pip.returncode == 0, f"pip install ./client failed:\n{pip.stdout}\n{pip.stderr}"

    check = subprocess.run(
        [python, "-c", CHECK], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert check.returncode == 0, f"the client does not import:\n{check.stderr}"
    found = json.loads(check.stdout)

    assert Path(found["package"]).is_relative_to(venv), "roomcast came from outside the venv"
    assert found["client_class"] == "roomcast.client.core"
    assert found["present"] == [], f"the client brought {found['present']}"
    # Every module of the client ships, and nothing of the server does.
    assert found["client"] == sorted(p.name for p in (ROOT / "src/roomcast/client").glob("*.py"))
    assert [m for m in found["modules"] if not m.startswith("client/")] == [
        "__init__.py",
        "exceptions.py",
        "model.py",
        "protocol/__init__.py",
        "protocol/codes.py",
        "protocol/messages.py",
        "textsafe.py",
    ]
