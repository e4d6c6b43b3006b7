#!/bin/sh
# The control plane's state store (the `store` service of docker-compose.yml): PostgreSQL 15
# listening on a unix socket only, in the volume mounted at /run/postgresql, which the control
# plane's container mounts too. No TCP listener, no password: the socket authenticates by peer
# (the connecting process's uid) — `postgres` for administration, and the control plane's
# root mapped to the role `controlplane`, which owns the database `controlplane`.
set -eu
PGDATA=/var/lib/postgresql/data/pgdata
SOCKET_DIR=/run/postgresql

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # First start: initdb into pgdata.init, renamed when complete (a crash leaves no half cluster).
  rm -rf "$PGDATA.init"
  initdb -D "$PGDATA.init" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=reject >/dev/null
  cat >"$PGDATA.init/pg_hba.conf" <<'HBA'
# Managed by the stack: the unix socket only, peer authentication.
local controlplane controlplane peer map=controlplane
local all          postgres     peer
HBA
  echo "controlplane root controlplane" >>"$PGDATA.init/pg_ident.conf"
  setup=$(mktemp -d)
  pg_ctl -D "$PGDATA.init" -w -s -o "-c listen_addresses='' -c unix_socket_directories=$setup" start
  psql -h "$setup" -U postgres -d postgres -XqAt -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE controlplane LOGIN" \
    -c "CREATE DATABASE controlplane OWNER controlplane"
  pg_ctl -D "$PGDATA.init" -w -s -m fast stop
  rmdir "$setup"
  mv "$PGDATA.init" "$PGDATA"
  echo "store: initialised $PGDATA"
fi

# A socket lock left by a killed server of this container (its pid may be reused now).
rm -f "$SOCKET_DIR"/.s.PGSQL.5432 "$SOCKET_DIR"/.s.PGSQL.5432.lock
exec postgres -D "$PGDATA" -c listen_addresses='' -c unix_socket_directories="$SOCKET_DIR"
