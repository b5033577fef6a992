#!/usr/bin/env python3
"""Recomputes a launch digest from the `measured` lines of `relaunch trace` alone.

Independent of relaunch's Rust code: it reads JSON lines on stdin (or a file argument) and
uses only hashlib.

- SNP: the PAGE_INFO chain (AMD SEV-SNP ABI spec, SNP_LAUNCH_UPDATE / PAGE_INFO;
  ../shared/spec/igvm-snp.md §2.1): LD starts as 48 zero bytes; per measured page
  LD = SHA-384(PAGE_INFO), PAGE_INFO (0x70 bytes) = DIGEST_CUR[48] @0x00, CONTENTS[48] @0x30
  (the page's SHA-384 for NORMAL/VMSA, zeros otherwise), LENGTH u16 = 0x70 @0x60,
  PAGE_TYPE u8 @0x62, IMI_PAGE u8 = 0 @0x63, VMPL permissions + reserved = 0 @0x64..0x67
  (upstream KVM has no such fields), GPA u64 @0x68 (little-endian).
- SEV / SEV-ES: SHA-256 over the measured bytes, in order (SEV API, LAUNCH_UPDATE_DATA /
  LAUNCH_UPDATE_VMSA extend the launch digest with the data as given).

A `KVM_CREATE_VM` line starts a new launch (trace --relaunch): the digest printed is that of
the last launch. Prints the digest as lowercase hex.
"""
import hashlib
import json
import struct
import sys


def page_info(prev: bytes, contents: bytes, gpa: int, page_type: int) -> bytes:
    return prev + contents + struct.pack("<HBB4sQ", 0x70, page_type, 0, b"\0" * 4, gpa)


def main() -> int:
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    kind = None
    ld = b"\0" * 48
    sev = hashlib.sha256()
    for line in src:
        line = line.strip()
        if not line:
            continue
        obj = json.loads(line)
        if obj.get("ioctl") == "KVM_CREATE_VM":
            kind, ld, sev = None, b"\0" * 48, hashlib.sha256()
            continue
        m = obj.get("measured")
        if m is None:
            continue
        if "page_type" in m:
            kind = "snp"
            contents = bytes.fromhex(m["sha384"]) if m["sha384"] else b"\0" * 48
            assert len(contents) == 48, "sha384 must be 48 bytes"
            ld = hashlib.sha384(page_info(ld, contents, m["gpa"], m["page_type"])).digest()
        elif "bytes" in m:
            kind = "sev"
            data = bytes.fromhex(m["bytes"])
            assert len(data) == m["len"], "len does not match the bytes"
            sev.update(data)
        else:
            kind = "other"
    if kind == "snp":
        print(ld.hex())
    elif kind == "sev":
        print(sev.hexdigest())
    else:
        print("trace_digest.py: no SNP or SEV measured lines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
