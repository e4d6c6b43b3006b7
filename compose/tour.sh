#!/usr/bin/env bash
# The README's curl tour, runnable against any control plane (local or the compose stack):
# create a 2-node database, read its task log, write on one node and read on the other, enable a
# posix backup repository, back up, restore in place, delete. Exits non-zero on the first
# surprise, saying what it expected.
#
# Usage: compose/tour.sh BACKUP_DIR
#   CONTROLPLANE_URL    default http://127.0.0.1:3000
#   CONTROLPLANE_TOKEN  default: the contents of $CONTROLPLANE_DATA_DIR/admin-token
#   BACKUP_DIR          a directory the instances may write to (the posix repository)
# Needs curl, jq and psql. The database it makes is called "storefront".
set -euo pipefail

BACKUP_DIR=${1:?usage: compose/tour.sh BACKUP_DIR}
URL=${CONTROLPLANE_URL:-http://127.0.0.1:3000}
TOKEN=${CONTROLPLANE_TOKEN:-$(cat "${CONTROLPLANE_DATA_DIR:-.controlplane}/admin-token")}
AUTH="Authorization: Bearer $TOKEN"
DB=storefront
PASSWORD=tour-$RANDOM$RANDOM

say() { printf '\n== %s\n' "$*"; }
fail() { echo "tour failed: $*" >&2; exit 1; }

# api METHOD PATH [BODY]: the response body; fails unless the status is 2xx.
api() {
  local out status body=()
  [ -n "${3:-}" ] && body=(-d "$3")
  out=$(mktemp)
  status=$(curl -sS -o "$out" -w '%{http_code}' -X "$1" "$URL$2" -H "$AUTH" \
    -H 'Content-Type: application/json' "${body[@]}")
  if [ "${status:0:1}" != 2 ]; then
    cat "$out" >&2
    rm -f "$out"
    fail "$1 $2 answered $status"
  fi
  cat "$out"
  rm -f "$out"
}

# wait_task TASK_ID: poll until the task is finished; fails unless it completed.
wait_task() {
  local status
  for _ in $(seq 1 600); do
    status=$(api GET "/v1/databases/$DB/tasks/$1" | jq -r .status)
    case "$status" in
      completed) return ;;
      failed | canceled | skipped)
        api GET "/v1/databases/$DB/tasks/$1" | jq -r .error >&2
        fail "task $1 $status"
        ;;
    esac
    sleep 0.5
  done
  fail "task $1 still $status after 5 minutes"
}

submit() { # METHOD PATH BODY → waits for the task the request started
  local task
  task=$(api "$1" "$2" "$3" | jq -r .task.task_id)
  echo "task $task"
  wait_task "$task"
}

node_port() { api GET "/v1/databases/$DB" | jq -r ".instances[] | select(.node_name == \"$1\") | .connection_info.port"; }
sql() { # NODE SQL → the single value
  PGPASSWORD=$PASSWORD psql -h 127.0.0.1 -p "$(node_port "$1")" -U admin -d app -XAtqc "$2"
}

spec() { # [BACKUP_CONFIG_JSON]
  jq -n --arg password "$PASSWORD" --argjson backup "${1:-null}" '{
    database_name: "app",
    database_users: [{username: "admin", password: $password, db_owner: true,
                      attributes: ["LOGIN"]}],
    postgresql_conf: {work_mem: "8MB"},
    nodes: [{name: "n1"}, {name: "n2"}]
  } + (if $backup then {backup_config: $backup} else {} end)'
}

say "create a 2-node database"
submit POST /v1/databases "$(jq -n --arg id "$DB" --argjson spec "$(spec)" '{id: $id, spec: $spec}')"
TASK=$(api GET "/v1/databases/$DB/tasks" | jq -r '.tasks[0].task_id')
entries=$(api GET "/v1/databases/$DB/tasks/$TASK/log?after_entry_id=0&limit=50" | jq '.entries | length')
[ "$entries" -gt 0 ] || fail "the create task has no log"
echo "its log: $entries entries on the first page"
api GET "/v1/databases/$DB" | jq -c '.instances[] | {node: .node_name, connection: .connection_info}'

say "write on n1, read on n2"
sql n1 "CREATE TABLE items (id int PRIMARY KEY, v text)"
sql n2 "CREATE TABLE items (id int PRIMARY KEY, v text)"
sql n1 "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 100) g"
for _ in $(seq 1 120); do
  [ "$(sql n2 'SELECT count(*) FROM items')" = 100 ] && break
  sleep 0.5
done
[ "$(sql n2 'SELECT count(*) FROM items')" = 100 ] || fail "n2 did not receive n1's rows"
echo "n2 holds n1's 100 rows"

say "enable backups to $BACKUP_DIR, back up n1"
REPOSITORY=$(jq -n --arg base "$BACKUP_DIR" '{type: "posix", base_path: $base}')
submit POST "/v1/databases/$DB" "$(spec "{\"repositories\": [$REPOSITORY]}" | jq '{spec: .}')"
submit POST "/v1/databases/$DB/nodes/n1/backups" '{"type": "full", "annotations": {"reason": "tour"}}'
LABEL=$(api GET "/v1/databases/$DB/nodes/n1/backups" | jq -r '.backups[-1].label')
echo "backup set $LABEL"

say "restore n1 in place to that set"
sql n1 "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(101, 150) g"
[ "$(sql n1 'SELECT count(*) FROM items')" = 150 ] || fail "n1 should hold 150 rows"
submit POST "/v1/databases/$DB/restore" "$(jq -n --arg db "$DB" --arg set "$LABEL" \
  --argjson repository "$REPOSITORY" '{target_nodes: ["n1"], restore_config: {
    source_database_id: $db, source_node_name: "n1", repository: $repository,
    restore_options: {type: "immediate", set: $set}}}')"
[ "$(sql n1 'SELECT count(*) FROM items')" = 100 ] || fail "n1 should hold the set's 100 rows"
echo "n1 holds exactly the set's 100 rows again"

say "delete it"
submit DELETE "/v1/databases/$DB" ""
status=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/databases/$DB" -H "$AUTH")
[ "$status" = 404 ] || fail "the deleted database still answers $status"
echo "tour complete"
