#!/usr/bin/env bash
# Trigger a DAG run through Airflow's REST API v2 (auth on), poll it to the end, print its task states.
# The same calls as the README's "Production" example; tests/test_production.py runs this file.
#
#   AIRFLOW_URL=http://127.0.0.1:8080 deploy/trigger-rest.sh credit_default_continuous_training \
#       '{"force": true, "reason": "new fraud pattern"}'
#
# Env: AIRFLOW_URL (http://127.0.0.1:8080), AIRFLOW_USER (admin), AIRFLOW_PASSWORD (else
# DRIFTLINE_AIRFLOW_PASSWORD, else the user's generated password in
# $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated, as `driftline up` keeps it),
# POLL_SECONDS (5), TIMEOUT_SECONDS (1800). Needs curl and jq. Exit 0 only if the run succeeded.
set -euo pipefail
DAG_ID="${1:?usage: trigger-rest.sh DAG_ID [CONF_JSON]}"
CONF=${2:-"{}"}
AIRFLOW_URL="${AIRFLOW_URL:-http://127.0.0.1:8080}"
POLL_SECONDS="${POLL_SECONDS:-5}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-1800}"

AIRFLOW_USER="${AIRFLOW_USER:-admin}"
AIRFLOW_PASSWORD="${AIRFLOW_PASSWORD:-${DRIFTLINE_AIRFLOW_PASSWORD:-}}"
PASSWORDS="${AIRFLOW_HOME:-}/simple_auth_manager_passwords.json.generated"
if [ -z "$AIRFLOW_PASSWORD" ] && [ -n "${AIRFLOW_HOME:-}" ] && [ -r "$PASSWORDS" ]; then
  AIRFLOW_PASSWORD=$(jq -r --arg u "$AIRFLOW_USER" '.[$u] // empty' "$PASSWORDS")
fi
if [ -z "$AIRFLOW_PASSWORD" ]; then
  echo "trigger-rest.sh: no password for $AIRFLOW_USER: set AIRFLOW_PASSWORD, or AIRFLOW_HOME to the stack's" \
       "(set -a; . \$DRIFTLINE_HOME/production/production.env; set +a)" >&2
  exit 2
fi

# 1. A JWT from the api-server (the password goes to jq on stdin, not on a command line others can list).
TOKEN=$(printf '%s' "$AIRFLOW_PASSWORD" | jq -Rs --arg u "$AIRFLOW_USER" '{username: $u, password: .}' \
  | curl -sf -X POST "$AIRFLOW_URL/auth/token" -H 'Content-Type: application/json' -d @- | jq -r .access_token)

# 2. Trigger with conf ("logical_date": null is required: a run without a logical date, like the UI's).
RUN_ID=$(curl -sf -X POST "$AIRFLOW_URL/api/v2/dags/$DAG_ID/dagRuns" \
  -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "$(jq -n --argjson conf "$CONF" '{logical_date: null, conf: $conf}')" | jq -r .dag_run_id)
echo "run_id=$RUN_ID"

# 3. Poll until it is finished.
RUN_PATH="$AIRFLOW_URL/api/v2/dags/$DAG_ID/dagRuns/$(jq -rn --arg r "$RUN_ID" '$r|@uri')"
deadline=$((SECONDS + TIMEOUT_SECONDS))
while :; do
  STATE=$(curl -sf "$RUN_PATH" -H "Authorization: Bearer $TOKEN" | jq -r .state)
  case "$STATE" in success|failed) break ;; esac
  if [ "$SECONDS" -ge "$deadline" ]; then echo "state=$STATE (timed out)"; exit 2; fi
  sleep "$POLL_SECONDS"
done
echo "state=$STATE"

# 4. Task states (task_id state try_number).
curl -sf "$RUN_PATH/taskInstances?limit=100" -H "Authorization: Bearer $TOKEN" \
  | jq -r '.task_instances[] | "task \(.task_id) \(.state) \(.try_number)"'
[ "$STATE" = success ]
