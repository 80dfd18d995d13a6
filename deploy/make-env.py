"""Write docker-compose's ``.env`` from ``.env.example`` with every ``change-me`` replaced by a
generated secret (a Fernet key for AIRFLOW_FERNET_KEY, URL-safe random text for the rest), readable by
its owner only (0600). Refuses to overwrite an existing file: rotating a secret is a deliberate step
(README, "Security").

    python deploy/make-env.py [--example .env.example] [--out .env]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "change-me"


def generated(name: str) -> str:
    if name == "AIRFLOW_FERNET_KEY":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    # token_urlsafe: letters, digits, - and _ only, so it can sit in a database URL unquoted.
    return secrets.token_urlsafe(32)


def render(example: str) -> str:
    """``example`` with each ``NAME=change-me`` line given a generated value; everything else kept."""
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value.strip() == PLACEHOLDER:
            line = f"{name}={generated(name.strip())}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    parser.add_argument("--out", type=Path, default=ROOT / ".env")
    args = parser.parse_args(argv)
    text = render(args.example.read_text())
    try:
        # O_EXCL: never overwrite secrets a running stack uses; 0600 from the first byte.
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"make-env: {args.out} exists; delete it or change single values by hand (README: Security)",
              file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)
        out.write(text)
    print(f"make-env: wrote {args.out} (mode 0600); the Airflow and MLflow admin passwords are in it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
