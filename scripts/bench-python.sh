#!/usr/bin/env bash
# The Python tchu-tchu 3.0.4 side of BENCHMARKS.md: installs tchu-tchu and Celery into a
# virtualenv (target/interop-venv, shared with the interop tests), starts a Celery worker
# (prefork, one process per core) and runs the same scenarios as `cargo bench --bench compare`.
# Usage: scripts/bench-python.sh [PUBLISH_N] [E2E_N] [RPC_N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-python.sh
VENV=target/interop-venv
# The same packages and marker as tests/python/mod.rs, so neither recreates the other's venv.
if [ ! -f "$VENV/.installed-3.0.4-jsonschema" ]; then
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "tchu-tchu==3.0.4" "celery==5.7.0" "jsonschema==4.23.0"
  touch "$VENV/.installed-3.0.4-jsonschema"
fi
cd benches/python
export PYTHONPATH=.
"../../$VENV/bin/python" -c "import benchsvc; benchsvc.bind()"
"../../$VENV/bin/celery" -A benchsvc worker -Q tchu_pybench --loglevel=WARNING --without-gossip --without-mingle --without-heartbeat -n pybench@%h >/tmp/pybench-worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; sleep 2; kill -9 $WORKER 2>/dev/null || true' EXIT
sleep 5
"../../$VENV/bin/python" bench.py "${1:-2000}" "${2:-2000}" "${3:-200}" | grep '^{'
