#!/usr/bin/env python3
"""Checks an op-dbus proof bundle with nothing but Python's standard library.

An independent implementation of docs/FORMAT.md, "Tamper evidence" (proof
format v1), for auditors who do not want to trust the op-dbus binary:
signed notes and Ed25519 (RFC 8032, written out here), op-dbus checkpoints
and their epoch certificates, RFC 6962 inclusion and consistency proofs,
and C2SP tlog-cosignature v1 witness cosignatures.

    verify_proof.py BUNDLE --key IDENTITY_VKEY [--witness VKEY ...] [--min-witnesses K]
    verify_proof.py --selftest

Exit 0: the bundle proves what it says (printed); 1: it does not (the
reason is printed); 2: usage.
"""

import argparse
import base64
import binascii
import hashlib
import sys


class Invalid(Exception):
    pass


# ---- Ed25519 verification (RFC 8032 section 5.1.7) ----

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def _decode_point(b):
    if len(b) != 32:
        return None
    v = int.from_bytes(b, "little")
    y = v & ((1 << 255) - 1)
    x = _recover_x(y, v >> 255)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k, pt):
    acc = (0, 1, 1, 0)
    while k:
        if k & 1:
            acc = _add(acc, pt)
        pt = _add(pt, pt)
        k >>= 1
    return acc


def _equal(p1, p2):
    return (p1[0] * p2[2] - p2[0] * p1[2]) % P == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % P == 0


_BY = 4 * pow(5, P - 2, P) % P
BASE = (_recover_x(_BY, 0), _BY, 1, _recover_x(_BY, 0) * _BY % P)


def ed25519_verify(public_key, msg, sig):
    if len(sig) != 64:
        return False
    a = _decode_point(public_key)
    r = _decode_point(sig[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(sig[:32] + public_key + msg).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(k, a)))


# ---- signed notes ----

def b64(s, what):
    try:
        b = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{what} is not base64")
    if base64.b64encode(b).decode() != s:
        raise Invalid(f"{what} is not canonical base64")
    return b


def key_id(name, alg, pk):
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + pk).digest()[:4]


class Vkey:
    def __init__(self, text):
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise Invalid(f"not a vkey: {text!r}")
        self.name, hex_id, key = parts
        raw = b64(key, "the vkey's key")
        if len(raw) != 33 or raw[0] not in (1, 4):
            raise Invalid("a vkey holds a 0x01 or 0x04 type byte and a 32-byte Ed25519 key")
        self.alg, self.pk = raw[0], raw[1:]
        self.id = key_id(self.name, self.alg, self.pk)
        if self.id.hex() != hex_id:
            raise Invalid("the vkey's key id does not match its name and key")


def parse_note(text):
    if any(c < " " and c != "\n" for c in text) or not text.endswith("\n"):
        raise Invalid("a note has control characters or no final newline")
    i = text.rfind("\n\n")
    if i < 0:
        raise Invalid("a note without signatures")
    body, sigs = text[: i + 1], text[i + 2 :]
    lines = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise Invalid("a signature line does not start with an em dash")
        name, _, sig = line[2:].partition(" ")
        raw = b64(sig, "a signature")
        if len(raw) < 5:
            raise Invalid("a signature is too short")
        lines.append((name, raw[:4], raw[4:]))
    return body, lines


def dec(s, what):
    if not s.isdigit() or (len(s) > 1 and s[0] == "0") or not s.isascii():
        raise Invalid(f"{what} is not a decimal without leading zeros")
    return int(s)


def check_checkpoint(note, identity):
    """Point 1 of "What verify checks"; returns (size, root, time_ns, text)."""
    text, sigs = parse_note(note)
    lines = text[:-1].split("\n")
    if len(lines) not in (5, 6):
        raise Invalid("a checkpoint has origin, size, root, op-dbus-time, op-dbus-epoch and an optional op-dbus-start")
    origin, size, root = lines[0], dec(lines[1], "the size"), b64(lines[2], "the root")
    if len(root) != 32:
        raise Invalid("the root is not 32 bytes")
    if origin != identity.name:
        raise Invalid(f"the checkpoint's origin {origin!r} is not the key's {identity.name!r}")
    if not lines[3].startswith("op-dbus-time "):
        raise Invalid("no op-dbus-time line")
    time_ns = dec(lines[3][len("op-dbus-time ") :], "op-dbus-time")
    f = lines[4].split(" ")
    if len(f) != 6 or f[0] != "op-dbus-epoch":
        raise Invalid("no op-dbus-epoch line")
    epoch, start, end = dec(f[1], "the epoch"), dec(f[2], "the epoch start"), dec(f[3], "the epoch end")
    epk, cert = b64(f[4], "the epoch key"), b64(f[5], "the epoch certificate")
    if len(epk) != 32 or len(cert) != 68:
        raise Invalid("the epoch key or certificate has the wrong length")
    if len(lines) == 6:
        s = lines[5].split(" ")
        if s[0] != "op-dbus-start" or not (s[1:] == ["none"] or (len(s) == 3 and dec(s[1], "start size") >= 0 and dec(s[2], "start time") >= 0)):
            raise Invalid("a malformed op-dbus-start line")
    if end <= start or start < epoch * (end - start):
        raise Invalid("the epoch's bounds are impossible")
    cert_text = f"op-dbus/epoch-key/v1\n{origin}\n{epoch}\n{start}\n{end}\n{f[4]}\n"
    if cert[:4] != identity.id or not ed25519_verify(identity.pk, cert_text.encode(), cert[4:]):
        raise Invalid(f"the certificate of epoch {epoch} does not verify under the identity key")
    if not start * 10**9 <= time_ns < end * 10**9:
        raise Invalid(f"not signed with its own epoch's key: time {time_ns} is outside epoch {epoch}")
    eid = key_id(origin, 1, epk)
    mine = [s for s in sigs if s[0] == origin and s[1] == eid]
    if not mine:
        raise Invalid("no signature by the epoch key")
    for _, _, sig in mine:
        if not ed25519_verify(epk, text.encode(), sig):
            raise Invalid("the checkpoint's signature does not verify")
    return size, root, time_ns, text, sigs


def check_witnesses(text, sigs, witnesses, minimum):
    ok = []
    for w in witnesses:
        for name, kid, sig in sigs:
            if name != w.name or kid != w.id or len(sig) != 72:
                continue
            ts = int.from_bytes(sig[:8], "big")
            msg = f"cosignature/v1\ntime {ts}\n".encode() + text.encode()
            if ts < 2**63 and ed25519_verify(w.pk, msg, sig[8:]):
                ok.append(w.name)
                break
    if len(ok) < minimum:
        raise Invalid(f"{len(ok)} valid cosignatures from the given witnesses, {minimum} required")
    return ok


# ---- RFC 6962 / 9162 proofs ----

def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index, size, leaf, proof, root):
    if index >= size:
        raise Invalid("the index is not in the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Invalid("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        raise Invalid("the inclusion proof does not lead to the checkpoint's root")


def verify_consistency(old, new, old_root, new_root, proof):
    if old > new:
        raise Invalid("old is larger than new")
    if old == new or old == 0:
        if proof or (old == new and old_root != new_root) or (old == 0 and old_root != hashlib.sha256(b"").digest()):
            raise Invalid("the consistency proof does not hold")
        return
    if old & (old - 1) == 0:
        proof = [old_root] + proof
    if not proof:
        raise Invalid("an empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise Invalid("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise Invalid("the consistency proof does not hold")


def msgpack_uint(b, i):
    m = b[i]
    if m <= 0x7F:
        return m, i + 1
    n = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(m)
    if n is None:
        raise Invalid("the block's seq is not an unsigned integer")
    return int.from_bytes(b[i + 1 : i + 1 + n], "big"), i + 1 + n


def hashes(lines, what):
    out = []
    while True:
        if not lines:
            raise Invalid(f"no empty line after the {what}")
        line = lines.pop(0)
        if line == "":
            return out
        h = b64(line, "a proof line")
        if len(h) != 32 or len(out) >= 64:
            raise Invalid("a proof line is not a hash, or there are more than 64")
        out.append(h)


def verify_bundle(data, identity, witnesses, minimum):
    text = data.decode("utf-8")
    head, _, rest = text.partition("\n")
    if head == "c2sp.org/tlog-proof@v1":
        lines = rest.split("\n")
        if not lines[0].startswith("extra "):
            raise Invalid("no extra line")
        body = b64(lines[0][6:], "the extra line")
        if not lines[1].startswith("index "):
            raise Invalid("no index line")
        index = dec(lines[1][6:], "the index")
        rest_lines = lines[2:]
        proof = hashes(rest_lines, "proof")
        size, root, time_ns, ctext, sigs = check_checkpoint("\n".join(rest_lines), identity)
        ok = check_witnesses(ctext, sigs, witnesses, minimum)
        if body[:2] != b"\x96\x01":
            raise Invalid("the block is not a version 1 block body")
        seq, _ = msgpack_uint(body, 2)
        if seq != index:
            raise Invalid(f"the block's seq {seq} is not the index {index}")
        block = hashlib.sha256(b"op-dbus:block:v1\x00" + body).digest()
        verify_inclusion(index, size, hashlib.sha256(b"\x00" + block).digest(), proof, root)
        return f"ok: block {block.hex()} is entry {index} of {identity.name}'s checkpoint of size {size} (time {time_ns}), cosigned by {len(ok)} witness(es)"
    if head == "op-dbus/consistency-proof@v1":
        lines = rest.split("\n")
        if not lines[0].startswith("old ") or not lines[1].startswith("new "):
            raise Invalid("no old and new lines")
        old, new = dec(lines[0][4:], "old"), dec(lines[1][4:], "new")
        rest_lines = lines[2:]
        proof = hashes(rest_lines, "proof")
        notes = "\n".join(rest_lines)
        i = notes.find("\n\n")
        j = notes.find("\n\n", i + 2)
        if i < 0 or j < 0:
            raise Invalid("two checkpoints are expected")
        o = check_checkpoint(notes[: j + 1], identity)
        n = check_checkpoint(notes[j + 2 :], identity)
        ok = check_witnesses(n[3], n[4], witnesses, minimum)
        if o[0] != old or n[0] != new or o[2] > n[2]:
            raise Invalid("the checkpoints are not the old and new ones")
        verify_consistency(old, new, o[1], n[1], proof)
        return f"ok: {identity.name}'s tree of size {old} is a prefix of its tree of size {new}, cosigned by {len(ok)} witness(es)"
    raise Invalid("not a proof bundle")


def selftest():
    # RFC 8032 section 7.1, tests 1 and 2.
    vectors = [
        ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
         "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
        ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
         "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ]
    for pk, msg, sig in vectors:
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        assert ed25519_verify(pk, msg, sig), "an RFC 8032 vector does not verify"
        assert not ed25519_verify(pk, msg + b"x", sig), "a changed message verifies"
        bad = bytearray(sig)
        bad[5] ^= 1
        assert not ed25519_verify(pk, msg, bytes(bad)), "a changed signature verifies"
    # The signed-note spec's example.
    v = Vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    text, sigs = parse_note("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
    assert sigs[0][1] == v.id and ed25519_verify(v.pk, text.encode(), sigs[0][2]), "the signed-note example does not verify"
    print("selftest ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--key", help="the log's identity vkey (or a file holding it)")
    ap.add_argument("--witness", action="append", default=[], help="a witness vkey (or file); repeatable")
    ap.add_argument("--min-witnesses", type=int, default=0)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        selftest()
        return 0
    if not a.bundle or not a.key:
        ap.error("a bundle and --key are required")

    def vkey(s):
        try:
            with open(s) as f:
                s = f.read()
        except OSError:
            pass
        return Vkey(s)

    try:
        identity = vkey(a.key)
        witnesses = [vkey(w) for w in a.witness]
        if a.min_witnesses > len(witnesses):
            ap.error("--min-witnesses is larger than the number of --witness keys")
        with open(a.bundle, "rb") as f:
            data = f.read(64 << 20)
        print(verify_bundle(data, identity, witnesses, a.min_witnesses))
        return 0
    except (Invalid, UnicodeDecodeError, IndexError) as e:
        print(f"FAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
