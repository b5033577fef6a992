#!/usr/bin/env bash
# Installs the independent measurement oracles the golden tests compare against, into
# .oracles/ at the repository root (gitignored). Idempotent: a second run only checks.
#
#   .oracles/venv/                 Python venv with sev-snp-measure (pinned below)
#   .oracles/bin/sev-snp-measure   its CLI
#   .oracles/ovmf/                 Debian's `ovmf` package, extracted (usr/share/ovmf/OVMF.fd,
#                                  usr/share/OVMF/OVMF_CODE*.fd, ...)
#   .oracles/VERSIONS              what was installed (tool and package versions)
#
# Needs: python3 with venv/pip (PyPI reachable), apt-get/dpkg-deb (Debian's archive reachable).
# Used by: tests/tests/golden_ssm.rs (which fails, naming this script, when something is missing).
set -euo pipefail

SSM_VERSION=0.0.13

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.oracles"
mkdir -p "$dest/bin"

# 1. sev-snp-measure in its own venv, pinned.
venv="$dest/venv"
have_ssm() {
    [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("sev-snp-measure") != sys.argv[1])' \
            "$SSM_VERSION" 2>/dev/null
}
if ! have_ssm; then
    echo "oracles: installing sev-snp-measure==$SSM_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "sev-snp-measure==$SSM_VERSION"
fi
ln -sf ../venv/bin/sev-snp-measure "$dest/bin/sev-snp-measure"
"$dest/bin/sev-snp-measure" --version >/dev/null

# 2. Debian's ovmf package, downloaded (not installed) and extracted.
ovmf="$dest/ovmf"
if [ ! -s "$ovmf/usr/share/ovmf/OVMF.fd" ] || [ ! -s "$dest/ovmf.version" ]; then
    echo "oracles: fetching Debian's ovmf package"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download ovmf >/dev/null 2>&1); then
        apt-get update >/dev/null
        (cd "$tmp" && apt-get download ovmf >/dev/null)
    fi
    deb="$(ls "$tmp"/ovmf_*.deb)"
    rm -rf "$ovmf"
    mkdir -p "$ovmf"
    dpkg-deb -x "$deb" "$ovmf"
    dpkg-deb -f "$deb" Version >"$dest/ovmf.version"
    (cd "$ovmf" && find usr/share -name '*.fd' -type f -printf '%p %s\n' | sort) >"$dest/ovmf.files"
fi

{
    echo "sev-snp-measure $SSM_VERSION (PyPI)"
    echo "ovmf $(cat "$dest/ovmf.version") (Debian, apt-get download)"
    echo "python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
} >"$dest/VERSIONS"
cat "$dest/VERSIONS"
