#!/usr/bin/env bash
# Instructions per RPC round trip and per delivered event, tchu next to raw lapin: a figure the
# machine's drift does not move (valgrind's callgrind counts instructions, not time).
#
# Each side runs alone (`compare --only rpc-tchu` ...) twice, with N1 and N2 messages; the
# difference of the two totals divided by N2 - N1 is the cost of one more message, with
# start-up, connection and shutdown cancelled out. Everything in the process counts: tchu or
# the raw program, lapin and its I/O thread, tokio. Usage: scripts/bench-instructions.sh [N1 N2]
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${1:-500}
n2=${2:-1500}
command -v valgrind >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q valgrind; }
export PATH="$HOME/.cargo/bin:$PATH"
bin=$(cargo bench --bench compare --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "compare" and m.get("executable"):
        print(m["executable"])')
count() { # side n -> instructions
    local flag=--e2e
    case $1 in rpc-*) flag=--rpc ;; esac
    # Bounded: a run that stalls under valgrind ends the script with a message, not a hang.
    local out
    if ! out=$(timeout 300 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bin" --only "$1" "$flag" "$2" 2>&1); then
        echo "bench-instructions: $1 with $2 messages failed or took over 300 s" >&2
        exit 1
    fi
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out"
}
declare -A measured
per() { # side -> instructions per message (each side measured once per run of the script)
    if [[ -z ${measured[$1]:-} ]]; then
        local a b
        a=$(count "$1" "$n1")
        b=$(count "$1" "$n2")
        measured[$1]=$(((b - a) / (n2 - n1)))
    fi
    echo "${measured[$1]}"
}
echo "instructions per message (callgrind; difference of $n1 and $n2 messages)"
echo
echo "| scenario | tchu | raw lapin | tchu / lapin |"
echo "|---|---|---|---|"
row() { # name tchu-side raw-side
    local t l
    per "$2" >/dev/null
    per "$3" >/dev/null
    t=${measured[$2]}
    l=${measured[$3]}
    python3 -c 'import sys; n, t, l = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); print(f"| {n} | {t:,} | {l:,} | {t / l:.2f} |")' "$1" "$t" "$l"
}
row "RPC round trip, caller + responder (raw: no Celery headers)" rpc-tchu rpc-raw
row "RPC round trip, raw sending tchu's Celery request (raw responder echoes)" rpc-tchu rpc-raw-celery
row "RPC round trip, Format::Native against raw" rpc-native rpc-raw
row "end to end, one event published, delivered, handled, acked (same Celery bytes)" e2e-tchu e2e-raw
row "user-shaped, Celery v2: a task per event, Client::publish, typed handler, tracing (raw: plain JSON, batched)" user-v2 user-raw
row "user-shaped, Format::Native (raw: plain JSON, batched)" user-native user-raw
row "publish_all, Celery v2, confirmed (raw: the same bytes, 256 pipelined confirms)" publish-all publish-raw
