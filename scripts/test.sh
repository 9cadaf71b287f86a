#!/usr/bin/env bash
# The whole test suite: unit, doc, wire-format, UI (trybuild) and RabbitMQ integration tests.
# Installs and starts RabbitMQ when absent (Debian, root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/ensure-rabbitmq.sh
cargo test --workspace
