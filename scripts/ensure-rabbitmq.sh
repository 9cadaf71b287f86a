#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 with its management API on
# 127.0.0.1:15672 (which `<service> check` and the tests use to list bindings): installs it with
# apt-get when absent (Debian, as root), enables the management plugin, starts it when stopped,
# and waits (bounded) until both accept connections.
set -euo pipefail

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_management() {
  for _ in $(seq 1 60); do
    if port_open 15672; then return 0; fi
    sleep 1
  done
  echo "ensure-rabbitmq: the management API did not come up on 127.0.0.1:15672 within 60 s" >&2
  exit 1
}

# The partition tests cut nodes apart with network namespaces (`ip netns`).
if ! command -v ip >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing iproute2 with apt-get (the partition tests use ip netns)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2
fi

if port_open 5672 && rabbitmqctl -q status >/dev/null 2>&1; then
  if ! port_open 15672; then
    echo "ensure-rabbitmq: enabling the management plugin" >&2
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    wait_management
  fi
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing rabbitmq-server with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q rabbitmq-server
fi

if ! port_open 5672; then
  rabbitmq-plugins -q enable --offline rabbitmq_management >/dev/null || true
  echo "ensure-rabbitmq: starting RabbitMQ" >&2
  rabbitmq-server -detached || true
fi

for _ in $(seq 1 180); do
  if port_open 5672 && rabbitmqctl -q await_startup >/dev/null 2>&1; then
    if ! port_open 15672; then
      rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    fi
    wait_management
    echo "ensure-rabbitmq: RabbitMQ is up on 127.0.0.1:5672 (management on :15672)" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up within 180 s" >&2
exit 1
