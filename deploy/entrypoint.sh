#!/bin/sh
# The image's entrypoint: run the container's command with the environment Driftline's own commands
# use (driftline.env), e.g. the Airflow connection of the new-labels watcher, derived from
# DRIFTLINE_REDIS_URL. Values compose sets win. Python, not `eval "$(driftline env)"`: a password
# with `$` or quotes in it would not survive the shell.
if [ "$#" -eq 0 ]; then
    echo "usage: driftline-entrypoint COMMAND [ARG...]" >&2
    exit 2
fi
exec python -c 'import os, sys
from driftline.env import driftline_env
os.environ.update(driftline_env())
os.execvp(sys.argv[1], sys.argv[1:])' "$@"
