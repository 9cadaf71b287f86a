#!/usr/bin/env bash
# Makes sure Redis answers on 127.0.0.1:6379: installs it with apt-get when absent (Debian, as
# root), starts it when stopped (bound to 127.0.0.1, nothing kept on disk), and waits (bounded).
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

if port_open 6379; then exit 0; fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: installing redis-server with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q redis-server
fi

echo "ensure-redis: starting Redis" >&2
redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null

for _ in $(seq 1 30); do
  if port_open 6379; then
    echo "ensure-redis: Redis is up on 127.0.0.1:6379" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-redis: Redis did not come up within 30 s" >&2
exit 1
