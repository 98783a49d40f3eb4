#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys
import traceback


def _database_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` was raised while opening a database connection."""
    return any(frame.f_code.co_name == "get_new_connection" for frame, _ in traceback.walk_tb(exc.__traceback__))


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "searchsite.settings")
    from django.core.management import execute_from_command_line
    from django.db import OperationalError

    try:
        execute_from_command_line(sys.argv)
    except OperationalError as exc:
        if not _database_unreachable(exc):
            raise
        # One line instead of a 40-line traceback: what to start, not where it failed.
        from django.conf import settings

        database = settings.DATABASES["default"]
        where = f"{database.get('HOST') or 'localhost'}:{database.get('PORT') or 5432}/{database.get('NAME')}"
        # psycopg: 'connection to server at "HOST", port N failed: Connection refused' + a hint
        first = (str(exc).strip().splitlines() or ["connection failed"])[0]
        reason = first.split("failed: ", 1)[-1].strip()
        sys.stderr.write(
            f"PostgreSQL is not reachable at {where} ({reason}): start `make run` in another terminal, "
            "or set DATABASE_URL.\n"
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
