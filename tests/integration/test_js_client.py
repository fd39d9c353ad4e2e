"""The npm package ``roomcast`` (clients/js): its types and its Node tests, run from pytest.

``make test`` runs this: the JavaScript client is checked with the rest. Node.js
20+ and npm are required (as Python is): a machine without them fails here, it
does not skip. ``npm ci`` runs when ``node_modules`` is missing or older than
``package-lock.json``; then ``tsc --noEmit --strict`` over the declarations and
``clients/js/test/types-check.ts``, then ``node --test`` over
``clients/js/test/*.test.js``, which start the real server with this Python.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clients" / "js"
#: The oldest Node.js the package supports (package.json "engines").
NODE_MAJOR = 20
#: Seconds for `npm ci` (a download on a fresh machine), tsc and the Node tests.
NPM_CI_TIMEOUT = 300
TSC_TIMEOUT = 120
NODE_TEST_TIMEOUT = 180
#: Seconds one Node test may take (each takes under 15 s here): a hang names its test.
NODE_TEST_EACH = 60

pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + TSC_TIMEOUT + NODE_TEST_TIMEOUT)


def tool(name: str) -> str:
    """The path of ``name`` on PATH; a failure (never a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: make test needs Node.js {NODE_MAJOR}+ and npm")
    return path


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command`` in clients/js; fail with its output unless it exits 0 in time.

    It runs in a process group of its own: past ``timeout`` the whole group is
    killed (``node --test`` runs each file in a child, which starts servers).
    """
    proc = subprocess.Popen(
        command,
        cwd=PACKAGE,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} took over {timeout} s:\n{out}\n{err}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {proc.returncode}:\n{out}\n{err}")
    return out


@pytest.fixture(scope="module")
def installed() -> None:
    """node and npm present, Node new enough, and node_modules as package-lock.json says."""
    node = tool("node")
    npm = tool("npm")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < NODE_MAJOR:
        pytest.fail(f"Node.js {version}: the package needs {NODE_MAJOR} or newer")
    lock = PACKAGE / "package-lock.json"
    # npm writes node_modules/.package-lock.json on every install: its time is the install's.
    marker = PACKAGE / "node_modules" / ".package-lock.json"
    # pytest-xdist runs this file's tests in several workers: one `npm ci` at a time.
    with open(Path(tempfile.gettempdir()) / "roomcast-npm-ci.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
            run([npm, "ci", "--no-audit", "--no-fund"], NPM_CI_TIMEOUT)


def test_declarations_type_check(installed: None) -> None:
    """roomcast.d.ts and a program using the whole API pass `tsc --noEmit --strict`."""
    run([tool("npx"), "--no-install", "tsc", "--noEmit", "--strict", "-p", "."], TSC_TIMEOUT)


def test_node_tests_pass(installed: None) -> None:
    """The Node tests (cuts, restart, backoff, states, HTTP fallback) pass on the real server."""
    tests = sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "test").glob("*.test.js"))
    assert tests, "no Node tests found"
    out = run(
        [tool("node"), "--test", f"--test-timeout={NODE_TEST_EACH * 1000}", *tests],
        NODE_TEST_TIMEOUT,
        env={"ROOMCAST_PYTHON": sys.executable},
    )
    assert "# fail 0" in out, out
