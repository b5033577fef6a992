#!/usr/bin/env python3
"""Known-answer vectors for relaunch-core `owner` (the SEV guest owner's LAUNCH_SECRET
packet), computed independently of relaunch with Python's `hmac` and the `cryptography`
package (AES-128-CTR).

Layout (AMD SEV firmware, amd/AMD-ASPFW fw/psp_bl_uapps/sev_uapp/src/sev_channel.c
`sev_channel_hmac` / `sev_channel_extract`; the same in virtee/sev
src/launch/sev/session/mod.rs `Session::secret` and AMDESE/sev-tool
`create_launch_secret_header`):

  header = FLAGS u32le || IV[16] || MAC[32]                        (52 bytes)
  packet = AES-128-CTR(TEK, IV, plaintext)                         (128-bit big-endian counter)
  MAC    = HMAC-SHA256(TIK, 0x01 || FLAGS u32le || IV || GUEST_LENGTH u32le
                             || TRANS_LENGTH u32le || packet || MEASURE[32])

MEASURE is the 32-byte MAC LAUNCH_MEASURE returned (not the launch digest).

Run: python3 scripts/sev_secret_vectors.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def launch_measure(tik, major, minor, build, policy, digest, mnonce):
    msg = bytes([0x04, major, minor, build]) + struct.pack("<I", policy) + digest + mnonce
    return hmac.new(tik, msg, hashlib.sha256).digest()


def secret(tek, tik, iv, flags, measure, plaintext, guest_len=None):
    guest_len = len(plaintext) if guest_len is None else guest_len
    packet = ctr(tek, iv, plaintext)
    msg = (b"\x01" + struct.pack("<I", flags) + iv + struct.pack("<I", guest_len)
           + struct.pack("<I", len(packet)) + packet + measure)
    mac = hmac.new(tik, msg, hashlib.sha256).digest()
    header = struct.pack("<I", flags) + iv + mac
    assert len(header) == 52
    return header, packet


def seq(start, n):
    return bytes((start + i) & 0xFF for i in range(n))


print("# vector 1: TEK 10..1f, TIK 20..2f, IV 30..3f, flags 0, MEASURE 40..5f,")
print("#           plaintext = b'relaunch: the launch secret #1\\n' (32 bytes)")
tek, tik, iv, measure = seq(0x10, 16), seq(0x20, 16), seq(0x30, 16), seq(0x40, 32)
pt = b"relaunch: the launch secret #1\n"
pt = pt + b"\n" * (32 - len(pt))
h, p = secret(tek, tik, iv, 0, measure, pt)
print("plaintext", pt.hex())
print("header   ", h.hex())
print("packet   ", p.hex())

print("# vector 2: the whole owner's turn. TIK/TEK as above; firmware API 1.55 build 0,")
print("#           policy 0x1 (NODBG), launch digest = SHA-256(4096 x 0xAB), mnonce f0..ff;")
print("#           then a 64-byte secret (bytes 0..63), IV a0..af, flags 0")
digest = hashlib.sha256(b"\xab" * 4096).digest()
mnonce = seq(0xF0, 16)
m = launch_measure(tik, 1, 55, 0, 1, digest, mnonce)
print("digest   ", digest.hex())
print("measure  ", m.hex())
h, p = secret(tek, tik, seq(0xA0, 16), 0, m, seq(0, 64))
print("header   ", h.hex())
print("packet   ", p.hex())

print("# vector 3: as vector 1 with FLAGS = 1 (COMPRESSED): only the header changes")
h, p = secret(tek, tik, iv, 1, measure, pt)
print("header   ", h.hex())
