#!/usr/bin/env bash
# Installs what the Linux-guest tests and `cargo xtask bench linux` need
# (vmm/tests/linux_guest.rs, xtask/src/bench_linux.rs, docs/linux-guests.md),
# into .oracles/linux/ at the repository root (gitignored). Idempotent.
#
#   .oracles/linux/vmlinuz          Debian's cloud kernel (linux-image-*-cloud-amd64, the
#                                   version the meta-package linux-image-cloud-amd64 names),
#                                   downloaded with apt-get download and extracted (not
#                                   installed)
#   .oracles/linux/VERSION          that package and version
#   qemu-system-x86_64              Debian's qemu-system-x86 (installed with apt-get when
#                                   missing): the independent loader relaunch's boot
#                                   parameters are compared with (its -kernel direct boot)
#   gcc, libc6-dev                  the tests build a static init for the initramfs
#   iasl                            Debian's acpica-tools: the independent disassembler
#                                   (`iasl -d`, which also verifies checksums) the ACPI
#                                   tables `pack --kernel` writes are checked with
#
# Needs: apt-get/dpkg-deb with Debian's archive reachable, root for apt-get install.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.oracles/linux"
mkdir -p "$dest"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v iasl >/dev/null || need+=(acpica-tools)
if [ ${#need[@]} -gt 0 ] && { [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; }; then
    # The Linux-guest tests skip with this reason (outside CI).
    echo "linux-guest: warning: ${need[*]} missing and cannot be installed here (needs root" \
        "and apt-get); the Linux-guest tests will skip" >&2
    exit 0
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "linux-guest: installing ${need[*]}"
    apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -s "$dest/vmlinuz" ] || [ ! -s "$dest/VERSION" ]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
    if [ -z "$pkg" ]; then
        apt-get update >/dev/null
        pkg="$(apt-cache depends linux-image-cloud-amd64 |
            sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)"
    fi
    [ -n "$pkg" ] || { echo "linux-guest: no linux-image-*-cloud-amd64 package found" >&2; exit 1; }
    echo "linux-guest: fetching Debian's $pkg"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download "$pkg" >/dev/null)
    deb="$(ls "$tmp"/linux-image-*.deb)"
    mkdir -p "$tmp/x"
    dpkg-deb -x "$deb" "$tmp/x"
    cp "$(ls "$tmp"/x/boot/vmlinuz-*)" "$dest/vmlinuz.new"
    mv "$dest/vmlinuz.new" "$dest/vmlinuz"
    echo "$pkg $(dpkg-deb -f "$deb" Version)" >"$dest/VERSION"
fi
echo "linux-guest: $(cat "$dest/VERSION"); $(qemu-system-x86_64 --version | head -n1)"
