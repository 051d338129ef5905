"""README.md's Run commands as written: the variables and argv after `bash scripts/install.sh &&`.

The tests run them (tests/serving/test_run_command.py, test_gpu_run_command.py) and
benchmarks/gpu_serving_bench.py starts its local Ray in the same environment.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ASSIGNMENT = re.compile(r"[A-Z_]+=.*")


def readme_run_command(config: str, readme: Path = README) -> tuple[dict[str, str], list[str]] | None:
    """(variables, argv) of the README line `bash scripts/install.sh && ...` that ends with `config`;
    None when the README has no such line."""
    lines = readme.read_text().splitlines() if readme.exists() else []
    matches = [line for line in lines if line.startswith("bash scripts/install.sh && ") and line.endswith(" " + config)]
    if not matches:
        return None
    [line] = matches
    words = shlex.split(line.split("&&", 1)[1])
    env = dict(word.split("=", 1) for word in words if ASSIGNMENT.fullmatch(word))
    return env, [word for word in words if not ASSIGNMENT.fullmatch(word)]
