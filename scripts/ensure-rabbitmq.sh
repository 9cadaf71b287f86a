#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs it with apt-get when absent
# (Debian, as root), starts it when stopped, and waits (bounded) until it accepts connections.
set -euo pipefail

port_open() { timeout 1 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null; }

if port_open && rabbitmqctl -q status >/dev/null 2>&1; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing rabbitmq-server with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q rabbitmq-server
fi

if ! port_open; then
  echo "ensure-rabbitmq: starting RabbitMQ" >&2
  rabbitmq-server -detached || true
fi

for _ in $(seq 1 180); do
  if port_open && rabbitmqctl -q await_startup >/dev/null 2>&1; then
    echo "ensure-rabbitmq: RabbitMQ is up on 127.0.0.1:5672" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up within 180 s" >&2
exit 1
