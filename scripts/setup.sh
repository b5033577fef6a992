#!/usr/bin/env bash
# Installs what relaunch's build and tests need on a fresh machine. Idempotent.
#  - the Rust targets for the bare-metal core/guests and the static musl binary;
#  - the independent measurement oracles the golden tests compare against
#    (scripts/oracles.sh: sev-snp-measure from PyPI, Debian's OVMF firmware);
#  - igvm-wrap (crate virtfw-igvm-tools, pure Rust: no C library; about 35 s to build on two
#    cores) for the F-UKI interop test (tests/tests/kvm_fuki_igvm_wrap.rs);
#  - for the Linux-guest tests (scripts/linux-guest.sh): Debian's cloud kernel, QEMU (the
#    independent -kernel loader relaunch's boot parameters are compared with), a static libc.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add x86_64-unknown-none x86_64-unknown-linux-musl >/dev/null
cargo fetch --locked >/dev/null

if [[ -f scripts/oracles.sh ]]; then
  bash scripts/oracles.sh
fi

IGVM_TOOLS_VERSION=0.2.6
if ! command -v igvm-wrap >/dev/null 2>&1; then
  echo "setup: installing igvm-wrap (virtfw-igvm-tools $IGVM_TOOLS_VERSION)"
  cargo install --locked --quiet virtfw-igvm-tools --version "$IGVM_TOOLS_VERSION"
fi

bash scripts/linux-guest.sh

if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "setup: warning: /dev/kvm is not usable here; 'relaunch run' and the KVM tests need it" >&2
fi
echo "setup: done"
