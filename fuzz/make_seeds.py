#!/usr/bin/env python3
"""Writes a few small valid IGVM files as a starting corpus for the `parse` target.

Usage: python3 fuzz/make_seeds.py fuzz/corpus/parse
       python3 fuzz/make_seeds.py --plan fuzz/corpus/parse_plan_measure
With --plan, every seed (plus boot-images/prebuilt/hello.igvm) is written once per platform, prefixed with the 4-byte
launch config the parse_plan_measure target reads.
Layouts: igvm_defs 0.5 (see ../shared/spec/igvm-snp.md section 1).
"""
import os
import struct
import sys
import zlib


def tlv(typ, body):
    h = struct.pack("<II", typ, len(body)) + body
    return h + b"\0" * (-len(h) % 8)


def igvm(version, hdrs, data=b"", arch=0):
    """hdrs: function(data_start) -> list of (type, body)."""
    fixed = 0x20 if version == 2 else 0x18
    size = len(b"".join(tlv(t, b) for t, b in hdrs(0)))
    region = b"".join(tlv(t, b) for t, b in hdrs(fixed + size))
    total = fixed + size + len(data)
    head = struct.pack("<6I", 0x4D564749, version, fixed, size, total, 0)
    if version == 2:
        head += struct.pack("<II", arch, 4096)
    crc = zlib.crc32(head + region) & 0xFFFFFFFF
    head = head[:0x14] + struct.pack("<I", crc) + head[0x18:]
    return head + region + data


def plat(mask, typ):
    return (0x1, struct.pack("<IBBHQ", mask, 0, typ, 1, 0))


def page(gpa, mask, off, flags=0, dt=0):
    return (0x302, struct.pack("<QIIIHH", gpa, mask, off, flags, dt, 0))


def area(size, idx, off=0):
    return (0x301, struct.pack("<QII", size, idx, off))


def param(typ, idx, off):
    return (typ, struct.pack("<II", idx, off))


def insert(gpa, mask, idx):
    return (0x303, struct.pack("<QII", gpa, mask, idx))


def vp(gpa, mask, off, idx=0):
    return (0x304, struct.pack("<QIIHH", gpa, mask, off, idx, 0))


def policy(mask, pol):
    return (0x101, struct.pack("<QII", pol, mask, 0))


PLATS = [plat(1, 2), plat(2, 0), plat(4, 3), plat(8, 5)]
vmsa = bytearray(4096)
vmsa[0x3B0] = 1
native = bytearray(4096)
native[0x80:0x88] = struct.pack("<Q", 0x100000)
content = bytes((i * 7) & 0xFF for i in range(4096))

seeds = {
    "minimal": igvm(1, lambda ds: [plat(1, 2), page(0, 1, 0)]),
    "v2": igvm(2, lambda ds: PLATS + [page(0x1000, 3, 0, 2)]),
    "snp": igvm(
        1,
        lambda ds: PLATS
        + [
            policy(1, 0x30000),
            area(0x2000, 0),
            param(0x307, 0, 0),
            param(0x30C, 0, 0x100),
            param(0x313, 0, 8),
            insert(0x10000, 1, 0),
            page(0, 1, ds),
            page(0x1000, 3, 0),
            page(0x2000, 1, 0, 2),
            page(0x3000, 1, 0, 0, 1),
            page(0x4000, 1, 0, 0, 2),
            page(0x200000, 4, ds, 1),
            vp(0xFFFFFFFFF000, 9, ds + 4096, 0),
            vp(0, 2, ds + 8192, 0),
        ],
        content + bytes(vmsa) + bytes(native),
    ),
    "optional": igvm(
        1,
        lambda ds: [plat(1, 2), (0x107, b"1.0"), (0x80000155, b"xyz"), page(0, 1, 0)],
    ),
}
plan = sys.argv[1] == "--plan"
out = sys.argv[-1]
os.makedirs(out, exist_ok=True)
if plan:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for rel in [
        "boot-images/prebuilt/hello.igvm",
    ]:
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path, "rb") as f:
                seeds[os.path.basename(rel)] = f.read()
    # config bytes: platform (native, sev, sev-es, snp, tdx), vCPUs-1, RAM size index, flags
    seeds = {f"{n}.{p}": bytes([p, 0, 1, 1]) + b for n, b in seeds.items() for p in range(5)}
for name, b in seeds.items():
    with open(os.path.join(out, name if plan else name + ".igvm"), "wb") as f:
        f.write(b)
print(f"wrote {len(seeds)} seeds to {out}")
