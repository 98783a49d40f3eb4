"""manage.py: a command that needs the database says in one line what to start when it is away."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import encode, load_photo

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _manage(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", ["import_catalog", "showmigrations"])
def test_a_command_without_a_reachable_database_prints_one_line_and_exits_2(tmp_path: Path, command: str) -> None:
    (tmp_path / "tower").mkdir()
    (tmp_path / "tower" / "a.jpg").write_bytes(encode(load_photo("coffee.png")))
    args = [str(tmp_path), "--catalog", "city"] if command == "import_catalog" else []
    port = _closed_port()
    result = _manage(command, *args, database_url=f"postgres://landmarks@127.0.0.1:{port}/landmarks")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"PostgreSQL is not reachable at 127.0.0.1:{port}/landmarks (Connection refused): "
        "start `make run` in another terminal, or set DATABASE_URL."
    ]
