#!/usr/bin/env bash
# Makes sure the pinned Rust toolchain (rust-toolchain.toml) is installed with rustfmt and
# clippy: installs rustup first on a machine without Rust (fresh Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! command -v rustup >/dev/null 2>&1; then
  if command -v cargo >/dev/null 2>&1; then
    # A Rust without rustup (a distribution package): it must be the pinned version itself.
    cargo --version
    exit 0
  fi
  echo "ensure-rust: installing rustup and Rust $pinned" >&2
  export DEBIAN_FRONTEND=noninteractive
  command -v curl >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q curl ca-certificates build-essential; }
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain none
fi
installed() { rustup toolchain list | grep -q "^$pinned-"; }
if ! installed; then
  if ! rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy; then
    # No network: a stable toolchain of exactly the pinned version serves as it.
    stable_sysroot=$(rustup run stable rustc --print sysroot 2>/dev/null || true)
    version=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
    if [ -n "$stable_sysroot" ] && [ "$version" = "$pinned" ]; then
      ln -s "$stable_sysroot" "$(dirname "$stable_sysroot")/$pinned-$(basename "$stable_sysroot" | sed 's/^stable-//')"
    else
      echo "ensure-rust: cannot install Rust $pinned" >&2
      exit 1
    fi
  fi
fi
for component in rustfmt clippy; do
  if ! rustup component list --toolchain "$pinned" --installed | grep -q "^$component"; then
    rustup component add --toolchain "$pinned" "$component"
  fi
done
cargo --version
