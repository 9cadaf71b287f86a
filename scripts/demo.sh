#!/usr/bin/env bash
# Runs the quickstart: two services and a publisher on the in-memory broker (no RabbitMQ needed).
# Set TCHU_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f to run it on RabbitMQ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo run --example quickstart
