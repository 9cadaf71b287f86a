#!/usr/bin/env bash
# The whole test suite: unit, doc, wire-format, UI (trybuild), RabbitMQ integration tests, and
# interoperability tests against the released Python tchu-tchu (installed from PyPI into a
# virtualenv under target/). Installs and starts RabbitMQ, and installs python3-venv, when absent
# (Debian, root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-python.sh
cargo test --workspace --features tls,cli,prometheus
