#!/usr/bin/env bash
# A longer soak of the network-partition test (tests/fault_partition.rs): the same three
# scenarios, the flapping one for TCHU_PARTITION_FLAP_SECS seconds (default 600; the test
# suite runs it for 60). Needs root (network namespaces); prints the scenarios' table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-python.sh
bash scripts/ensure-postgres.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tchu_test}"
export TCHU_PARTITION_FLAP_SECS="${TCHU_PARTITION_FLAP_SECS:-600}"
cargo test --features postgres --test fault_partition -- --nocapture
