#!/usr/bin/env python3
"""Smoke-runs a relaunch test-guest IGVM bundle (its NATIVE view) on /dev/kvm.

A development aid for boot-images only, independent of the relaunch VMM: it loads the
native view's PAGE_DATA and VP context, and models exactly the guest conventions of
docs/boot-images.md (port 0x80, COM1, fw_cfg PIO + DMA with etc/relaunch/generation and
key 0x0005, reset via 0x64 / 0xCF9 / triple fault, power-off via 0x604, pvpanic 0x505,
in-kernel LAPIC for SMP). Each reset starts a new KVM VM with generation + 1.

    python3 boot-images/tools/kvm_smoke.py boot-images/out/hello.igvm
    python3 boot-images/tools/kvm_smoke.py boot-images/out/smp.igvm --vcpus 4
    python3 boot-images/tools/kvm_smoke.py boot-images/out/reboot-loop.igvm --reboot-until 7
    python3 boot-images/tools/kvm_smoke.py boot-images/out/smp.igvm --view tdx --vcpus 2

`--view tdx` loads the TDX view instead and starts every vCPU in the TDX module's initial
state (flat 32-bit protected mode at 0xFFFFFFF0, paging off, EFER 0x901, RSI = vCPU index),
as relaunch's emulated:tdx backend would; it proves nothing about real TDX. `--view sev`
loads the SEV view (its pages, including the launch-secret page, and its native context).

`--sev-status N` gives the guest a SEV view on this ordinary KVM VM, as relaunch's emulated
SEV platforms plan to (../shared/DESIGN.md "This host"): CPUID 0x8000001F EAX = SEV (bit 1),
plus SEV-ES (bit 3) if N bit 1, plus SNP (bit 4) if N bit 2; EBX = C-bit 47 | reduction 1
<< 6; CPUID 0x80000008 EAX[7:0] = 48; RDMSR of SEV_STATUS (0xC0010131) answered N from
here (KVM_CAP_X86_USER_SPACE_MSR + KVM_X86_SET_MSR_FILTER); guest RAM aliased at GPA 1 << 47
(a second memslot), so page tables with the C-bit set reach the same memory.
`--sev-cpuid-only` sets only that CPUID (SEV_STATUS then is KVM's: #GP on these hosts).
`--secret HEX` writes the launch-secret page (u32 LE length, then the bytes) before the run.

    python3 boot-images/tools/kvm_smoke.py boot-images/out/sevinfo.igvm --view sev \
        --sev-status 1 --secret 68656c6c6f

Exit status: 0 after a power-off, 1 on pvpanic / error / timeout.
"""
import argparse
import ctypes
import mmap
import os
import struct
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]


def _io(nr):
    return (0xAE << 8) | nr


def _iow(nr, size):
    return (1 << 30) | (size << 16) | (0xAE << 8) | nr


def _ior(nr, size):
    return (2 << 30) | (size << 16) | (0xAE << 8) | nr


def _iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAE << 8) | nr


# linux/include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
KVM_CREATE_VM = _io(0x01)
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, 32)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, 144)
KVM_SET_REGS = _iow(0x82, 144)
KVM_GET_SREGS = _ior(0x83, 312)
KVM_SET_SREGS = _iow(0x84, 312)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_SET_MP_STATE = _iow(0x99, 4)
KVM_ENABLE_CAP = _iow(0xA3, 104)          # struct kvm_enable_cap
KVM_X86_SET_MSR_FILTER = _iow(0xC6, 392)  # struct kvm_msr_filter
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1
EXIT_X86_RDMSR = 29
MSR_SEV_STATUS = 0xC0010131
# The guest-visible SEV view: C-bit 47 (CPUID 0x8000001F EBX[5:0]), 48 physical bits.
SEV_CBIT = 47
SEV_PHYS_BITS = 48
# boot-images/guests/src/layout.rs SEV_SECRET_GPA
SEV_SECRET_GPA = 0x9000

EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_SHUTDOWN = 2, 5, 6, 8
EXIT_NAMES = {0: "unknown", 9: "fail_entry", 17: "internal_error", 24: "system_event"}


def ioctl(fd, req, arg=None):
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    r = libc.ioctl(fd, req, ptr)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"ioctl {req:#x}: {os.strerror(e)}")
    return r


class Igvm:
    """One view of an IGVM file: its pages and (native view) its VP context."""

    def __init__(self, data, platform_type=0):
        magic, ver, voff, vsize, total, _crc = struct.unpack_from("<6I", data, 0)
        assert magic == 0x4D564749 and ver == 1 and total == len(data), "not an IGVM v1 file"
        self.pages = []  # (gpa, bytes or None)
        self.context = None
        native = None
        at, end = voff, voff + vsize
        while at < end:
            typ, length = struct.unpack_from("<II", data, at)
            body = data[at + 8:at + 8 + length]
            at += 8 + ((length + 7) & ~7)
            if typ == 0x001:
                mask, _vtl, ptype = struct.unpack_from("<IBB", body)
                if ptype == platform_type:
                    native = mask
            elif typ == 0x302:
                gpa, mask, off, flags, dtype = struct.unpack_from("<QIIIH", body)
                if native is not None and mask & native:
                    self.pages.append((gpa, data[off:off + 4096] if off else None))
            elif typ == 0x304:
                gpa, mask, off, vp = struct.unpack_from("<QIIH", body)
                if native is not None and mask & native and vp == 0:
                    self.context = data[off:off + 232]
        assert native is not None, f"no platform of type {platform_type}"
        assert platform_type != 0 or self.context is not None, "no native VP context"


class FwCfg:
    def __init__(self, vm, items, files):
        self.vm = vm
        self.items = dict(items)
        names = sorted(files)
        directory = struct.pack(">I", len(names))
        for i, name in enumerate(names):
            key = 0x20 + i
            self.items[key] = files[name]
            directory += struct.pack(">IHH56s", len(files[name]), key, 0, name.encode())
        self.items[0x19] = directory
        self.key, self.off, self.dma_high = 0, 0, 0

    def select(self, key):
        self.key, self.off = key, 0

    def read_byte(self):
        item = self.items.get(self.key, b"")
        b = item[self.off] if self.off < len(item) else 0
        self.off += 1
        return b

    def dma(self, addr):
        ram = self.vm.ram
        if addr + 16 > len(ram):
            return
        control, length, address = struct.unpack_from(">IIQ", ram, addr)
        if control & 0x08:
            self.select(control >> 16)
        error = False
        if control & 0x02:
            item = self.items.get(self.key, b"")
            if address + length > len(ram):
                error = True
            else:
                chunk = item[self.off:self.off + length]
                chunk = chunk + bytes(length - len(chunk))
                ram[address:address + length] = chunk
                self.off += length
        elif control & 0x04:
            self.off += length
        elif control & 0x10:
            error = True  # nothing is writable
        struct.pack_into(">I", ram, addr, 1 if error else 0)


class Launch:
    def __init__(self, kvm, igvm, args, generation):
        self.args = args
        self.generation = generation
        self.vm = ioctl(kvm, KVM_CREATE_VM, 0)
        size = args.mem << 20
        self.ram_ptr = libc.mmap(None, size, 3, 0x22, -1, 0)  # RW, PRIVATE|ANONYMOUS
        self.ram = (ctypes.c_char * size).from_address(self.ram_ptr)
        self.ram = memoryview(self.ram).cast("B")
        region = struct.pack("<IIQQQ", 0, 0, 0, size, self.ram_ptr)
        buf = ctypes.create_string_buffer(region, 32)
        ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, buf)
        if args.sev_status is not None:
            self.sev_view()
        if args.vcpus > 1:
            ioctl(self.vm, KVM_CREATE_IRQCHIP)
        # Pages above RAM (the TDX reset page) get one extra memslot each.
        for slot, (gpa, page) in enumerate(igvm.pages, start=1):
            if gpa + 4096 <= size:
                if page is not None:
                    self.ram[gpa:gpa + len(page)] = page
                continue
            ptr = libc.mmap(None, 4096, 3, 0x22, -1, 0)
            if page is not None:
                ctypes.memmove(ptr, page, len(page))
            region = struct.pack("<IIQQQ", slot, 0, gpa, 4096, ptr)
            ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, ctypes.create_string_buffer(region, 32))
        if args.secret is not None:
            secret = bytes.fromhex(args.secret)
            page = struct.pack("<I", len(secret)) + secret
            self.ram[SEV_SECRET_GPA:SEV_SECRET_GPA + len(page)] = page
        files = {"etc/relaunch/generation": struct.pack("<Q", generation)}
        if args.reboot_until is not None:
            files["opt/relaunch/reboot-until"] = struct.pack("<Q", args.reboot_until)
        self.fw = FwCfg(self, {0: b"QEMU", 1: struct.pack("<I", 3),
                               5: struct.pack("<H", args.vcpus)}, files)
        self.lock = threading.Lock()
        self.outcome = None
        self.done = threading.Event()
        self.first_marker = None
        self.exits = {"io": 0, "mmio": 0}
        self.lcr = 0
        mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        cpuid = self.supported_cpuid(kvm)
        self.vcpus = []
        for i in range(args.vcpus):
            fd = ioctl(self.vm, KVM_CREATE_VCPU, i)
            ioctl(fd, KVM_SET_CPUID2, cpuid)
            run = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.vcpus.append((fd, run))
        if igvm.context is not None:
            self.set_context(self.vcpus[0][0], igvm.context)
        else:
            for i, (fd, _run) in enumerate(self.vcpus):
                self.set_tdx_initial(fd, i)
        self.start = time.monotonic()

    @staticmethod
    def set_tdx_initial(fd, index):
        """core-nostd arch::vmsa::tdx_initial_regs / tdx_vcpu_regs."""
        sregs = ctypes.create_string_buffer(312)
        ioctl(fd, KVM_GET_SREGS, sregs)
        flat = [(0xC09B, 0)] + [(0xC093, i) for i in (1, 2, 3, 4, 5)]
        for attr, index_ in flat:
            struct.pack_into("<QIHBBBBBBBB", sregs, index_ * 24, 0, 0xFFFFFFFF, 0,
                             attr & 0xF, 1, 0, 1, 1, 0, 1, 0)
        struct.pack_into("<QH", sregs, 192, 0, 0xFFFF)
        struct.pack_into("<QH", sregs, 208, 0, 0)
        struct.pack_into("<Q", sregs, 224, 0x21)
        struct.pack_into("<QQ", sregs, 240, 0, 0x40)
        struct.pack_into("<Q", sregs, 264, 0x901)
        ioctl(fd, KVM_SET_SREGS, sregs)
        # kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
        regs = [0, 48, 0, 0x800F12, index, 0, 0, 0] + [0] * 8 + [0xFFFFFFF0, 2]
        ioctl(fd, KVM_SET_REGS, ctypes.create_string_buffer(struct.pack("<18Q", *regs), 144))
        mp_state = ctypes.create_string_buffer(struct.pack("<I", 0), 4)  # RUNNABLE
        ioctl(fd, KVM_SET_MP_STATE, mp_state)

    def sev_view(self):
        """SEV_STATUS reads exit to user space; RAM aliased at 1 << SEV_CBIT (slot 100)."""
        cap = struct.pack("<II4Q", KVM_CAP_X86_USER_SPACE_MSR, 0, KVM_MSR_EXIT_REASON_FILTER,
                          0, 0, 0) + bytes(64)
        ioctl(self.vm, KVM_ENABLE_CAP, ctypes.create_string_buffer(cap, 104))
        self.msr_bitmap = ctypes.create_string_buffer(1)  # bit clear = denied = exit
        filt = struct.pack("<I4x", 0)  # KVM_MSR_FILTER_DEFAULT_ALLOW
        filt += struct.pack("<IIIxxxxQ", KVM_MSR_FILTER_READ, 1, MSR_SEV_STATUS,
                            ctypes.addressof(self.msr_bitmap))
        filt += bytes(392 - len(filt))
        ioctl(self.vm, KVM_X86_SET_MSR_FILTER, ctypes.create_string_buffer(filt, 392))
        size = self.args.mem << 20
        region = struct.pack("<IIQQQ", 100, 0, 1 << SEV_CBIT, size, self.ram_ptr)
        ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, ctypes.create_string_buffer(region, 32))

    def supported_cpuid(self, kvm):
        n = 256
        buf = ctypes.create_string_buffer(8 + 40 * n)
        struct.pack_into("<I", buf, 0, n)
        ioctl(kvm, KVM_GET_SUPPORTED_CPUID, buf)
        if self.args.sev_status is None and not self.args.sev_cpuid_only:
            return buf
        status = self.args.sev_status or 0
        sev_eax = (1 << 1) | ((status & 2) << 2) | ((status & 4) << 2)
        entries = {}
        count = struct.unpack_from("<I", buf, 0)[0]
        for i in range(count):
            # kvm_cpuid_entry2: function, index, flags, eax, ebx, ecx, edx, padding[3]
            entries[i] = list(struct.unpack_from("<7I", buf, 8 + 40 * i))
        def put(function, eax, ebx):
            for e in entries.values():
                if e[0] == function:
                    e[3], e[4] = eax, ebx
                    return
            entries[len(entries)] = [function, 0, 0, eax, ebx, 0, 0]
        put(0x8000001F, sev_eax, SEV_CBIT | (1 << 6))
        for e in entries.values():
            if e[0] == 0x80000008:
                e[3] = (e[3] & ~0xFF) | SEV_PHYS_BITS
            if e[0] == 0x80000000:
                e[3] = max(e[3], 0x8000001F)
        out = ctypes.create_string_buffer(8 + 40 * len(entries))
        struct.pack_into("<I", out, 0, len(entries))
        for i, e in sorted(entries.items()):
            struct.pack_into("<7I", out, 8 + 40 * i, *e)
        return out

    @staticmethod
    def set_context(fd, c):
        g = struct.unpack_from("<18Q", c, 0)  # rax..r15, rip, rflags
        idtr_base, idtr_limit = struct.unpack_from("<QH", c, 144)
        gdtr_limit, gdtr_base = struct.unpack_from("<HQ", c, 158)
        cs_sel, cs_attr, cs_base, cs_lim = struct.unpack_from("<HHII", c, 168)
        ds_sel, ds_attr, ds_base, ds_lim = struct.unpack_from("<HHII", c, 180)
        _gs_base, cr0, cr3, cr4, efer = struct.unpack_from("<5Q", c, 192)
        sregs = ctypes.create_string_buffer(312)
        ioctl(fd, KVM_GET_SREGS, sregs)

        def seg(index, sel, attr, base, limit):
            # kvm_segment: base, limit, selector, type, present, dpl, db, s, l, g, avl
            struct.pack_into("<QIHBBBBBBBB", sregs, index * 24, base, limit, sel,
                             attr & 0xF, (attr >> 7) & 1, (attr >> 5) & 3, (attr >> 14) & 1,
                             (attr >> 4) & 1, (attr >> 13) & 1, (attr >> 15) & 1,
                             (attr >> 12) & 1)

        seg(0, cs_sel, cs_attr, cs_base, cs_lim)
        for i in (1, 2, 3, 4, 5):  # ds es fs gs ss
            seg(i, ds_sel, ds_attr, ds_base, ds_lim)
        struct.pack_into("<QH", sregs, 192, gdtr_base, gdtr_limit)
        struct.pack_into("<QH", sregs, 208, idtr_base, idtr_limit)
        struct.pack_into("<Q", sregs, 224, cr0)
        struct.pack_into("<QQ", sregs, 240, cr3, cr4)
        struct.pack_into("<Q", sregs, 264, efer)
        ioctl(fd, KVM_SET_SREGS, sregs)
        # IGVM order rax rcx rdx rbx rsp rbp rsi rdi; kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp
        kvm_order = (g[0], g[3], g[1], g[2], g[6], g[7], g[4], g[5]) + g[8:]
        regs = ctypes.create_string_buffer(struct.pack("<18Q", *kvm_order), 144)
        ioctl(fd, KVM_SET_REGS, regs)

    def finish(self, outcome):
        with self.lock:
            if self.outcome is None:
                self.outcome = outcome
        self.done.set()

    def io(self, run):
        direction, size, port, count, off = struct.unpack_from("<BBHIQ", run, 32)
        data = run[off:off + size * count]
        out = direction == 1
        value = int.from_bytes(data[:size], "little")
        self.exits["io"] += 1
        if out and port == 0x80 and self.first_marker is None:
            self.first_marker = time.monotonic() - self.start
        if port == 0x3FB and out:
            self.lcr = value  # bit 7 (DLAB): 0x3F8 is the divisor latch, not THR
        elif port == 0x3F8 and out and not self.lcr & 0x80:
            sys.stdout.buffer.write(bytes(data[:1]))
            sys.stdout.flush()
        elif port == 0x3FD and not out:
            run[off] = 0x60
        elif port == 0x510 and out and size == 2:
            self.fw.select(value)
        elif port == 0x511 and not out:
            for i in range(size * count):
                run[off + i] = self.fw.read_byte()
        elif port == 0x514 and out and size == 4:
            self.fw.dma_high = int.from_bytes(data[:4], "big")
        elif port == 0x518 and out and size == 4:
            self.fw.dma((self.fw.dma_high << 32) | int.from_bytes(data[:4], "big"))
        elif port == 0x64 and out and value == 0xFE:
            self.finish("reset:i8042")
        elif port == 0xCF9 and out and size == 1 and value & 0x04:
            self.finish("reset:cf9")
        elif port == 0x604 and out and size == 2 and value & 0x2000:
            self.finish("poweroff")
        elif port == 0x505 and out:
            self.finish("panic")
        elif not out:
            for i in range(size * count):
                run[off + i] = 0xFF

    def vcpu_loop(self, index):
        fd, run = self.vcpus[index]
        while not self.done.is_set():
            try:
                ioctl(fd, KVM_RUN)
            except OSError as e:
                if e.errno in (4, 11):  # EINTR, EAGAIN (INIT on a waiting AP)
                    continue
                self.finish(f"error:vcpu{index}:{e}")
                return
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason == EXIT_IO:
                self.io(run)
            elif reason == EXIT_MMIO:
                self.exits["mmio"] += 1
                _addr, _data, length, is_write = struct.unpack_from("<Q8sIB", run, 32)
                if not is_write:
                    run[40:40 + length] = b"\xff" * length
            elif reason == EXIT_X86_RDMSR:
                # kvm_run.msr: error u8 @32, reason u32 @40, index u32 @44, data u64 @48
                index = struct.unpack_from("<I", run, 44)[0]
                if index == MSR_SEV_STATUS:
                    struct.pack_into("<BQ", run, 32, 0, 0)
                    struct.pack_into("<Q", run, 48, self.args.sev_status)
                else:
                    struct.pack_into("<B", run, 32, 1)  # error: #GP
            elif reason == EXIT_HLT:
                self.finish(f"hlt:vcpu{index}")
            elif reason == EXIT_SHUTDOWN:
                if self.args.verbose:
                    regs = ctypes.create_string_buffer(144)
                    ioctl(fd, KVM_GET_REGS, regs)
                    g = struct.unpack_from("<18Q", regs)
                    print(f"[smoke] shutdown: rip {g[16]:#x} rsp {g[6]:#x}", file=sys.stderr)
                self.finish("reset:triple-fault")
            elif reason == 17:  # KVM_EXIT_INTERNAL_ERROR: suberror, ndata, data[]
                sub, ndata = struct.unpack_from("<II", run, 32)
                data = struct.unpack_from(f"<{min(ndata, 16)}Q", run, 40)
                self.finish(f"exit:internal_error:{sub}:{[hex(d) for d in data]}")
            else:
                self.finish(f"exit:{EXIT_NAMES.get(reason, reason)}")

    def run(self, timeout):
        threads = [threading.Thread(target=self.vcpu_loop, args=(i,), daemon=True)
                   for i in range(len(self.vcpus))]
        for t in threads:
            t.start()
        if not self.done.wait(timeout):
            return "timeout"
        return self.outcome


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("igvm")
    p.add_argument("--mem", type=int, default=64, help="RAM in MiB")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--reboot-until", type=int)
    p.add_argument("--max-launches", type=int, default=20)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--verbose", action="store_true", help="registers at a triple fault")
    p.add_argument("--view", choices=["native", "tdx", "sev"], default="native")
    p.add_argument("--sev-status", type=lambda v: int(v, 0),
                   help="emulate a SEV view whose SEV_STATUS MSR reads this value")
    p.add_argument("--sev-cpuid-only", action="store_true",
                   help="CPUID 0x8000001F reports SEV, SEV_STATUS is left to KVM")
    p.add_argument("--secret", help="launch secret bytes (hex) for the secret page")
    args = p.parse_args()
    igvm = Igvm(open(args.igvm, "rb").read(), {"native": 0, "tdx": 3, "sev": 4}[args.view])
    kvm = os.open("/dev/kvm", os.O_RDWR)
    for generation in range(1, args.max_launches + 1):
        launch = Launch(kvm, igvm, args, generation)
        outcome = launch.run(args.timeout)
        marker = (f"{launch.first_marker * 1e3:.2f} ms" if launch.first_marker is not None
                  else "none")
        print(f"[smoke] generation {generation}: {outcome}; first port-0x80 write after "
              f"{marker}; exits {launch.exits}", file=sys.stderr)
        if outcome == "poweroff":
            os._exit(0)
        if not outcome.startswith("reset:"):
            os._exit(1)
        if args.vcpus > 1:
            print("[smoke] resets with several vCPUs are not modelled", file=sys.stderr)
            os._exit(1)
        os.close(launch.vcpus[0][0])
        os.close(launch.vm)
    print("[smoke] launch limit reached", file=sys.stderr)
    os._exit(1)


if __name__ == "__main__":
    main()
