#!/usr/bin/env bash
# The interoperability tests run the released Python tchu-tchu with Celery in a virtualenv they
# create under target/: they need python3 with venv and pip (installed with apt-get if absent).
set -euo pipefail
if python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  exit 0
fi
echo "ensure-python: installing python3, python3-venv and python3-pip with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q python3 python3-venv python3-pip
