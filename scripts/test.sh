#!/usr/bin/env bash
# The whole test suite: unit, doc, wire-format, UI (trybuild), RabbitMQ integration tests, and
# interoperability tests against the released Python tchu-tchu (installed from PyPI into a
# virtualenv under target/), and the inbox/outbox tests on PostgreSQL and Redis. Installs and
# starts RabbitMQ, PostgreSQL and Redis, and installs python3-venv, when absent (Debian, root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-python.sh
bash scripts/ensure-postgres.sh
bash scripts/ensure-redis.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tchu_test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
cargo test --workspace --features tls,prometheus,postgres,redis,otel
