#!/usr/bin/env bash
# Makes sure cargo is on PATH (a fresh Debian machine has no Rust toolchain): uses rustup's
# installer when cargo is missing. Edition 2024 needs Rust 1.85 or newer.
set -euo pipefail
if command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; then
  exit 0
fi
echo "ensure-rust: installing the Rust toolchain with rustup" >&2
export DEBIAN_FRONTEND=noninteractive
command -v curl >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q curl ca-certificates build-essential; }
curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
