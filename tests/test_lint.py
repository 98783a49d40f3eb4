"""ruff's TID253 (ruff.toml): TensorFlow and Keras are imported at module level only by
the modules that run a network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"


def test_no_module_outside_the_extractors_imports_tensorflow_at_load_time() -> None:
    result = subprocess.run([RUFF, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_refuses_tensorflow_in_a_web_module() -> None:
    result = subprocess.run(
        [RUFF, "check", "--stdin-filename", "retrieval/views.py", "-"],
        cwd=ROOT, input="import tensorflow\n", capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "TID253" in result.stdout
