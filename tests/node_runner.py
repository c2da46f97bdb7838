"""Run a small ES-module check in Node on JSON input: how the pages' JavaScript is held to Python's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


def node_or_skip() -> str:
    """The ``node`` executable, or skip the test (Node comes with npm, which the site build needs)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (it comes with npm)")
    return node


def run_node(script: Path, payload: Any) -> Any:
    """``node SCRIPT`` with ``payload`` as JSON on stdin; its stdout read back as JSON."""
    done = subprocess.run(
        [node_or_skip(), str(script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)
