#!/usr/bin/env python3
"""SEV / SEV-ES launch digest of an IGVM bundle's SEV or SEV-ES view, computed without relaunch.

An independent cross-check of `relaunch measure FILE --platform sev|sev-es` for our boot
images. It has its own IGVM reader and follows the SEV rules as sev-snp-measure applies them
to OVMF (../shared/spec/igvm-snp.md §3.1, sev-snp-measure 0.0.13 `guest.py`, `vmsa.py`):

- the digest is one SHA-256 over every page LAUNCH_UPDATE_DATA encrypts, in file order
  (PAGE_DATA of the view: its 4 KiB of file data, or 4 KiB of zeros when it has none;
  unmeasured pages are skipped), then, for SEV-ES, over one 4 KiB VMSA per vCPU;
- VP 0's VMSA is the bundle's VMSA as KVM rebuilds it from the registers QEMU gives it
  (../shared/spec/kvm-vmsa-synthesis.md §2, §4(b)): segment attributes keep bits 11:0,
  GDTR/IDTR keep limit and base, EFER |= SVME, CR4 |= MCE, CR0 &= ~(CD|NW), CR0 |= ET
  (QEMU), RFLAGS |= 2, CPL = SS.DPL, SEV_FEATURES = VP 0's without SNP_ACTIVE (INIT2),
  FPU x87_fcw 0x37F / mxcsr 0x1F80 (INIT2, as sev-snp-measure's SEV-ES model);
- vCPUs the bundle gives no context get sev-snp-measure's QEMU reset-state VMSA
  (`VMSA.build_save_area(0xFFFFFFF0, features, vcpu_sig)`).

Needs sev-snp-measure (its `SevEsSaveArea` layout and reset VMSA): run it with the
oracles' interpreter, `.oracles/venv/bin/python3` (scripts/oracles.sh installs it).

    .oracles/venv/bin/python3 boot-images/tools/sev_measure.py boot-images/out/hello.igvm \\
        --platform sev-es --vcpus 4 --vcpu-sig 0x800f12
"""
import argparse
import hashlib
import struct
import sys

from sevsnpmeasure.vmsa import VMSA, SevEsSaveArea

PLATFORM_TYPES = {"sev": 4, "sev-es": 5}  # igvm_defs IgvmPlatformType SEV, SEV_ES
PAGE = 4096


def view(data, platform_type):
    """(pages, vmsa0) of the view: pages as 4 KiB byte strings in file order."""
    magic, version, voff, vsize, total, _crc = struct.unpack_from("<6I", data, 0)
    if magic != 0x4D564749 or version != 1 or total != len(data):
        sys.exit("not an IGVM v1 file")
    mask = None
    pages, vmsa0 = [], None
    at, end = voff, voff + vsize
    while at < end:
        typ, length = struct.unpack_from("<II", data, at)
        body = data[at + 8:at + 8 + length]
        at += 8 + ((length + 7) & ~7)
        if typ == 0x001:  # SUPPORTED_PLATFORM: mask u32, vtl u8, type u8
            m, _vtl, ptype = struct.unpack_from("<IBB", body)
            if ptype == platform_type:
                mask = m
        elif typ == 0x302 and mask is not None:  # PAGE_DATA
            _gpa, m, off, flags, dtype = struct.unpack_from("<QIIIH", body)
            if not m & mask:
                continue
            if flags & ~0x2 or dtype != 0:
                sys.exit(f"PAGE_DATA with flags {flags:#x} type {dtype}: not handled here")
            if flags & 0x2:  # unmeasured
                continue
            page = data[off:off + PAGE] if off else b""
            pages.append(page + bytes(PAGE - len(page)))
        elif typ == 0x304 and mask is not None:  # VP_CONTEXT
            _gpa, m, off, vp = struct.unpack_from("<QIIH", body)
            if m & mask and vp == 0:
                vmsa0 = data[off:off + PAGE]
    if mask is None:
        sys.exit("the bundle has no such view")
    return pages, vmsa0


def kvm_vmsa(igvm_vmsa):
    """The VMSA KVM measures for a bundle VMSA (see the module documentation)."""
    src = SevEsSaveArea.from_buffer_copy(igvm_vmsa)
    v = SevEsSaveArea()
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"):
        s = getattr(src, name)
        d = getattr(v, name)
        d.selector, d.attrib, d.limit, d.base = s.selector, s.attrib & 0xFFF, s.limit, s.base
    for name in ("gdtr", "idtr"):
        getattr(v, name).limit = getattr(src, name).limit
        getattr(v, name).base = getattr(src, name).base
    v.cpl = (v.ss.attrib >> 5) & 3
    v.efer = src.efer | 0x1000
    v.cr4 = src.cr4 | 0x40
    v.cr3 = src.cr3
    v.cr0 = (src.cr0 | 0x10) & ~((1 << 30) | (1 << 29))
    v.dr7, v.dr6 = src.dr7, src.dr6
    v.rflags = src.rflags | 2
    v.rip = src.rip
    for r in ("rsp", "rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(v, r, getattr(src, r))
    v.g_pat = src.g_pat
    v.xcr0 = src.xcr0
    v.sev_features = src.sev_features & ~1
    v.x87_fcw = 0x37F
    v.mxcsr = 0x1F80
    return bytes(v)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("igvm")
    p.add_argument("--platform", choices=sorted(PLATFORM_TYPES), required=True)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--vcpu-sig", type=lambda v: int(v, 0), default=0)
    args = p.parse_args()
    pages, vmsa0 = view(open(args.igvm, "rb").read(), PLATFORM_TYPES[args.platform])
    h = hashlib.sha256()
    for page in pages:
        h.update(page)
    if args.platform == "sev-es":
        if vmsa0 is None:
            sys.exit("the SEV-ES view has no VMSA for VP 0")
        features = SevEsSaveArea.from_buffer_copy(vmsa0).sev_features & ~1
        h.update(kvm_vmsa(vmsa0))
        reset = bytes(VMSA.build_save_area(VMSA.BSP_EIP, features, args.vcpu_sig))
        for _ in range(1, args.vcpus):
            h.update(reset)
    print(h.hexdigest())


if __name__ == "__main__":
    main()
