"""Create a superuser if none with that name exists (used by ``make run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the admin account on first start; an existing account is left unchanged."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", type=Path, required=True)

    def handle(self, *args: Any, username: str, password_file: Path, **options: Any) -> None:
        users = get_user_model()
        if users.objects.filter(username=username).exists():
            return
        users.objects.create_superuser(username=username, email="", password=password_file.read_text().strip())
        self.stdout.write(f"created superuser {username!r}")
