#!/usr/bin/env bash
# The whole suite: lint; every test on SQLite (the default); the tests that use the database again on a
# throwaway PostgreSQL server; static analysis; the audit. Budget: 30 minutes on two cores (docs/development.md).
# Arguments go to pytest (make test ARGS="-k upload"; or bash tests/run_all.sh -k upload).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST=.venv/bin/pytest
FULL=0  # no arguments: the whole run (lint, both databases, static analysis, audit)
[ "$#" -eq 0 ] && FULL=1
STARTED=$SECONDS
TIMES=""
stage() { TIMES="$TIMES$1 $(( SECONDS - STAGE_START ))s; "; }

if [ "$FULL" = 1 ]; then
  STAGE_START=$SECONDS
  echo "== lint (ruff.toml: pycodestyle, pyflakes, import order, bugbear, pyupgrade; 'ruff check --fix .' repairs most)"
  .venv/bin/ruff check .
  stage lint
  # The slowest tests of each pass, so the budget stays visible.
  set -- --durations=15
fi

STAGE_START=$SECONDS
echo "== tests on SQLite"
"$PYTEST" "$@"
stage SQLite

echo "== tests on PostgreSQL"
STAGE_START=$SECONDS
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed (make test installs it)"; exit 1; }
PGDATA=$(mktemp -d /tmp/skinweb-test-pg.XXXXXX)
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"
stop_pg() { as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PGDATA"; }
trap stop_pg EXIT
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U skinweb --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-p $PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null
# What uses no database gives the same result on either and ran in the SQLite pass (tests/conftest.py).
# A selection with no such test runs none here (pytest's exit status 5), which is not a failure.
DATABASE_URL="postgres://skinweb@127.0.0.1:$PORT/skinweb" "$PYTEST" --db-only "$@" || [ $? = 5 ]
stage PostgreSQL

if [ "$FULL" = 1 ]; then
  STAGE_START=$SECONDS
  echo "== static analysis (bandit: medium and high severity fail; accepted low findings: docs/security.md)"
  .venv/bin/bandit -q -r skinweb classifier --severity-level medium
  stage bandit
  STAGE_START=$SECONDS
  echo "== known vulnerabilities in the pinned requirements (pip-audit against PyPI's advisory data)"
  AUDIT=$(mktemp)
  # pip-audit exits 1 for a vulnerability; the summary says so too, and what could not be checked.
  .venv/bin/pip-audit -r requirements.txt --progress-spinner off --format json -o "$AUDIT" 2>/dev/null || true
  .venv/bin/python tests/pip_audit_summary.py "$AUDIT"
  rm -f "$AUDIT"
  stage audit
  echo "== time: ${TIMES}total $(( SECONDS - STARTED ))s (budget 1800s)"
fi
