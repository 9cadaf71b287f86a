#!/usr/bin/env bash
# The whole benchmark in one command: tchu next to raw lapin (same run, alternating), then the
# same scenarios on Python tchu-tchu 3.0.4 with Celery, and tchu next to Python, then
# instructions per message under callgrind (scripts/bench-instructions.sh), then the inbox and
# outbox stores next to raw lapin (benches/stores.rs), then ordered handlers (benches/ordered.rs).
# Arguments are passed to the Rust bench (e.g. --runs 5). Results go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/ensure-rabbitmq.sh
out=$(mktemp)
cargo bench --bench compare -- "$@" | tee "$out"
py=$(bash scripts/bench-python.sh 2000 2000 200 | tail -1)
echo
echo "Python tchu-tchu 3.0.4 (Celery 5.7, prefork worker): $py"
python3 - "$out" "$py" <<'PY'
import json, re, sys
rust = open(sys.argv[1]).read()
py = json.loads(sys.argv[2])
def tchu(label):
    m = re.search(r"\| " + re.escape(label) + r" \| ([0-9.]+) ", rust)
    return float(m.group(1)) if m else float("nan")
rows = [
    ("publish throughput", "publish throughput", "publish_per_s", "msg/s"),
    ("end-to-end throughput", "end-to-end throughput, one service", "e2e_per_s", "events/s"),
    ("RPC sequential", "RPC sequential", "rpc_per_s", "calls/s"),
    ("RPC, 64 concurrent callers (Python: sequential)", "RPC, 64 concurrent callers", "rpc_per_s", "calls/s"),
]
print("\n| scenario | tchu | Python tchu-tchu | tchu / Python |\n|---|---|---|---|")
for name, label, key, unit in rows:
    t, p = tchu(label), py[key]
    print(f"| {name} | {t:.0f} {unit} | {p:.0f} {unit} | {t / p:.1f} |")
print(f"| RPC round trip p50 | {tchu('RPC round trip p50'):.3f} ms | {py['rpc_p50_ms']:.3f} ms | {py['rpc_p50_ms'] / tchu('RPC round trip p50'):.1f}x faster |")
PY
echo
bash scripts/bench-instructions.sh
echo
# The inbox's cost per event and the outbox relay's throughput (PostgreSQL, Redis).
bash scripts/ensure-postgres.sh
bash scripts/ensure-redis.sh
cargo bench --bench stores --features postgres,redis
echo
# Ordered handlers next to the same handler unordered and raw lapin (benches/ordered.rs).
cargo bench --bench ordered
