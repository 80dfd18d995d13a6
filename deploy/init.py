"""airflow-init's second step (after ``airflow db migrate``): refuse placeholder secrets, set the
Airflow admin's password from ``AIRFLOW_ADMIN_PASSWORD``, and create the Driftline store's tables
once, before Celery workers race to create them.

Run as ``python deploy/init.py`` with the compose environment; exits non-zero naming the problem.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PLACEHOLDER = "change-me"
ADMIN = "admin"  # airflow.cfg: simple_auth_manager_users = admin:admin (user admin, role admin)


def placeholders(environ: dict[str, str]) -> list[str]:
    """The variables still holding .env.example's placeholder (also inside URLs built from one)."""
    return sorted(name for name, value in environ.items() if PLACEHOLDER in value)


def set_admin_password(airflow_home: Path, password: str) -> Path:
    """SimpleAuthManager keeps a password already in its file: write the admin's there (other users kept)."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    users = json.loads(path.read_text()) if path.exists() else {}
    users[ADMIN] = password
    airflow_home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(users))
    path.chmod(0o600)
    return path


def main() -> int:
    left = placeholders(dict(os.environ))
    if left:
        print(f"airflow-init: {', '.join(left)} still hold the '{PLACEHOLDER}' placeholder: set real values "
              f"in .env (see .env.example)", file=sys.stderr)
        return 1
    password = os.environ.get("AIRFLOW_ADMIN_PASSWORD", "")
    if not password:
        print("airflow-init: AIRFLOW_ADMIN_PASSWORD is empty: set it in .env", file=sys.stderr)
        return 1
    from ml.settings import get_settings
    from ml.store import Store

    path = set_admin_password(Path(os.environ["AIRFLOW_HOME"]), password)
    store_url = get_settings().store_url
    Store(store_url)
    print(f"airflow-init: admin password set in {path}; store tables ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
