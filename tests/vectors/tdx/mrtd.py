#!/usr/bin/env python3
"""Second, from-scratch implementation of the TDX MRTD of a TDVF/OVMF image, used by
tests/tests/golden_ssm.rs to cross-check relaunch's firmware planner + MRTD fold. Python
stdlib only. Not an independent tool (written in this project), but independent code:
it shares nothing with the Rust planner.

What it computes (the launch QEMU's `tdx_finalize_vm` + KVM `KVM_TDX_INIT_MEM_REGION`
perform): for every TDVF section in metadata order that is not PAGE_AUG, for every 4 KiB
page ascending, a 128-byte "MEM.PAGE.ADD" record (GPA at byte 16), then, when the section
has MR_EXTEND, 16 "MR.EXTEND" records (chunk GPA at byte 16) each followed by the 256
bytes of the chunk (KVM's single-pass order; kvm-coco-abi.md §3.3). Section data comes
from the image at data_offset (raw_size bytes, zero-extended); TD_HOB / TempMem pages are
added without MR.EXTEND, so their contents do not matter.

Usage: mrtd.py IMAGE  -> prints the MRTD as lowercase hex.
"""
import hashlib
import struct
import sys
import uuid

FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
TDX = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")


def table(img):
    at = len(img) - 0x20 - 18
    size, = struct.unpack_from("<H", img, at)
    assert uuid.UUID(bytes_le=img[at + 2:at + 18]) == FOOTER, "no GUID table"
    end, start = at, at - (size - 18)
    out = {}
    while end - start >= 18:
        n, = struct.unpack_from("<H", img, end - 18)
        g = uuid.UUID(bytes_le=img[end - 16:end])
        out[g] = img[end - n:end - 18]
        end -= n
    return out


def record(tag, gpa):
    r = bytearray(128)
    r[:len(tag)] = tag
    struct.pack_into("<Q", r, 16, gpa)
    return bytes(r)


def mrtd(img):
    off, = struct.unpack_from("<I", table(img)[TDX], 0)
    base = len(img) - off
    sig, length, version, count = struct.unpack_from("<4sIII", img, base)
    assert sig == b"TDVF" and version == 1 and length == 16 + 32 * count
    h = hashlib.sha384()
    for i in range(count):
        data_off, raw, gpa, size, typ, attr = struct.unpack_from("<IIQQII", img, base + 16 + 32 * i)
        if attr & 2:  # PAGE_AUG: accepted by the guest, not added
            continue
        data = img[data_off:data_off + raw] + bytes(size - raw) if typ in (0, 1) else bytes(size)
        for p in range(0, size, 4096):
            h.update(record(b"MEM.PAGE.ADD", gpa + p))
            if attr & 1:
                for c in range(0, 4096, 256):
                    h.update(record(b"MR.EXTEND", gpa + p + c))
                    h.update(data[p + c:p + c + 256])
    return h.hexdigest()


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        print(mrtd(f.read()))
