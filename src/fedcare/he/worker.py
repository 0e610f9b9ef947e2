"""The OpenFHE engine process: threshold CKKS operations behind a length-prefixed pipe.

Run as ``python worker.py`` by :class:`fedcare.he.engine.OpenFheEngine` under an
interpreter that has OpenFHE's Python bindings (PyPI ships them for CPython 3.10 and 3.12
only, not for fedcare's 3.11). It imports nothing of fedcare: stdlib, numpy and openfhe.

Frames, both ways: ``u32`` header length, a JSON header, then ``u32`` blob count and each
blob as ``u64`` length + bytes. OpenFHE objects cross the pipe only as OpenFHE's own
BINARY serialisation (no pickle). Secret key shares are created here and never leave:
the caller holds an opaque handle.

Parameters (see docs/he.md): CKKS, ``HEStd_128_classic``, multiplicative depth 0 (the
aggregate needs additions only), one 60-bit modulus, scale 2^45, FIXEDMANUAL rescaling and
BV key switching (no key-switching key is ever made, so no auxiliary modulus P counts
against the security bound). OpenFHE then picks ring dimension 4096 (log Q = 60 <= 109,
its own HE-standard check). Complex packing (``CKKSDataType.COMPLEX``): each of the 2048
slots carries two values (real and imaginary part), 4096 values per ciphertext.
"""

from __future__ import annotations

import json
import secrets
import struct
import sys
import traceback

import numpy as np
import openfhe as o

_context = None
_slots = 0  # CKKS slots per ciphertext (ring dimension / 2)
_complex = True  # two values per slot (real and imaginary part)
_bound = 0.0  # |decrypted value| beyond this: a share is missing or wrong (values wrap mod Q)
_keys: dict = {}
_sums: dict = {}  # running sums of ciphertexts (the coordinator's fold), by handle

# Every party derives the same context from the same parameters, so the CRT tables need not be
# recomputed for each deserialised object: 21 ms -> 2 ms per ciphertext (measured, ring 8192).
o.DisablePrecomputeCRTTablesAfterDeserializaton()


def _make_context(params: dict):
    """The CKKS context every party derives from the same parameters (deterministic moduli)."""
    p = o.CCParamsCKKSRNS()
    level = {"128": o.HEStd_128_classic, "192": o.HEStd_192_classic, "256": o.HEStd_256_classic}[
        str(params.get("security_bits", 128))
    ]
    p.SetSecurityLevel(level)
    p.SetMultiplicativeDepth(0)
    p.SetScalingModSize(int(params.get("scale_bits", 45)))
    p.SetFirstModSize(int(params.get("first_mod_bits", 60)))
    p.SetScalingTechnique(o.FIXEDMANUAL)
    # depth 0 and no evaluation keys: BV adds no auxiliary modulus, so log QP = log Q (HYBRID's
    # extra 60-bit P made OpenFHE pick ring 8192 for the same single 60-bit modulus)
    p.SetKeySwitchTechnique(o.BV)
    if int(params.get("ring_dim", 0)):
        p.SetRingDim(int(params["ring_dim"]))  # OpenFHE refuses a ring below the security level's
    if params.get("packing", "complex") == "complex":
        p.SetCKKSDataType(o.COMPLEX)
    cc = o.GenCryptoContext(p)
    for feature in (o.PKE, o.LEVELEDSHE, o.MULTIPARTY):
        cc.Enable(feature)
    return cc


def _ct(blob: bytes):
    return o.DeserializeCiphertextString(blob, o.BINARY)


def _pk(blob: bytes):
    return o.DeserializePublicKeyString(blob, o.BINARY)


def _ser(obj) -> bytes:
    return bytes(o.Serialize(obj, o.BINARY))


def _per_ct() -> int:
    """Values per ciphertext: two per slot under complex packing."""
    return 2 * _slots if _complex else _slots


def _need_context() -> None:
    if _context is None:
        raise ValueError("engine has no context (call init first)")


def handle(header: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
    """Run one operation; returns the reply header and blobs."""
    global _context, _slots, _complex, _bound
    op = header.get("op")
    if op == "init":
        params = header.get("params", {})
        packing = params.get("packing", "complex")
        if packing not in ("complex", "real"):
            raise ValueError(f"unknown packing {packing!r}")
        _context = _make_context(params)
        _slots = _context.GetRingDimension() // 2
        _complex = packing == "complex"
        _bound = float(2 ** (int(params.get("first_mod_bits", 60)) - int(params.get("scale_bits", 45)) - 1))
        import math

        return {
            "ring_dim": _context.GetRingDimension(),
            "slots": _per_ct(),
            "ckks_slots": _slots,
            "packing": packing,
            "log_q": math.log2(_context.GetModulus()),
            "openfhe": getattr(o, "__version__", "") or "",
        }, []
    _need_context()
    cc = _context
    if op == "keygen":
        # lead: a fresh key pair (its public key fixes the common random polynomial a);
        # share: a key pair on the lead's a (star topology: fresh=True, not accumulated)
        kp = cc.KeyGen() if not blobs else cc.MultipartyKeyGen(_pk(blobs[0]), False, True)
        handle_id = secrets.token_hex(16)
        _keys[handle_id] = kp.secretKey
        return {"handle": handle_id}, [_ser(kp.publicKey)]
    if op == "join":
        joint = _pk(blobs[0])
        for blob in blobs[1:]:
            pk = _pk(blob)
            joint = cc.MultiAddPubKeys(joint, pk, pk.GetKeyTag())
        return {}, [_ser(joint)]
    if op == "encrypt":
        pk = _pk(blobs[0])
        values = np.frombuffer(blobs[1], dtype="<f8")
        per = _per_ct()
        count = -(-len(values) // per)
        flat = np.zeros(count * per, dtype=np.float64)  # the last ciphertext is padded with zeros
        flat[: len(values)] = values
        out = []
        for j in range(count):
            chunk = flat[j * per : (j + 1) * per]
            if _complex:  # first half in the real parts, second half in the imaginary parts
                chunk = chunk[:_slots] + 1j * chunk[_slots:]
            out.append(_ser(cc.Encrypt(pk, cc.MakeCKKSPackedPlaintext(np.ascontiguousarray(chunk)))))
        return {"count": len(out)}, out
    if op == "add":
        # blobs: k parties x m ciphertexts, party-major; returns m sums
        m = int(header["per_party"])
        if m <= 0 or len(blobs) % m:
            raise ValueError(f"add: {len(blobs)} ciphertexts are not parties x {m}")
        sums = [_ct(b) for b in blobs[:m]]
        for start in range(m, len(blobs), m):
            for j in range(m):
                sums[j] = cc.EvalAdd(sums[j], _ct(blobs[start + j]))
        return {}, [_ser(c) for c in sums]
    if op == "check":
        # each blob must be a ciphertext of this context's ring (a malformed reply is the sender's failure)
        for i, blob in enumerate(blobs):
            ct = _ct(blob)
            if ct.NumberCiphertextElements() != 2 or ct.GetLevel() != 0 or ct.GetSlots() != _slots:
                raise ValueError(f"ciphertext {i} is not a fresh {_slots}-slot ciphertext of this context")
        return {}, []
    if op == "fold":
        # one party's ciphertexts, checked, added into a running sum (unchanged on any error)
        cts = [_ct(b) for b in blobs]
        for i, ct in enumerate(cts):
            if ct.NumberCiphertextElements() != 2 or ct.GetLevel() != 0 or ct.GetSlots() != _slots:
                raise ValueError(f"ciphertext {i} is not a fresh {_slots}-slot ciphertext of this context")
        acc = header.get("acc") or ""
        if not acc:
            if not cts:
                raise ValueError("fold: no ciphertexts")
            acc = secrets.token_hex(16)
            _sums[acc] = cts
            return {"acc": acc}, []
        total = _sums.get(acc)
        if total is None:
            raise ValueError("fold: unknown running sum")
        if len(cts) != len(total):
            raise ValueError(f"fold: {len(cts)} ciphertexts, the sum has {len(total)}")
        _sums[acc] = [cc.EvalAdd(a, b) for a, b in zip(total, cts, strict=True)]
        return {"acc": acc}, []
    if op == "take":
        total = _sums.pop(header.get("acc"), None)
        if total is None:
            raise ValueError("take: unknown running sum")
        return {}, [_ser(c) for c in total]
    if op == "partial":
        key = _keys.get(header.get("handle"))
        if key is None:
            raise ValueError("partial: unknown or forgotten key handle")
        cts = [_ct(b) for b in blobs]
        fn = cc.MultipartyDecryptLead if header.get("lead") else cc.MultipartyDecryptMain
        return {}, [_ser(p) for p in fn(cts, key)]
    if op == "fuse":
        # blobs: k parties x m partial decryptions, party-major; returns m * slots float64
        m = int(header["per_party"])
        length = int(header["length"])
        if m <= 0 or len(blobs) % m:
            raise ValueError(f"fuse: {len(blobs)} partial decryptions are not parties x {m}")
        k = len(blobs) // m
        per = _per_ct()
        if not 0 < length <= m * per:
            raise ValueError(f"fuse: {length} values do not fit {m} ciphertexts")
        out = np.empty(m * per, dtype="<f8")
        for j in range(m):
            parts = [_ct(blobs[i * m + j]) for i in range(k)]
            pt = cc.MultipartyDecryptFusion(parts)
            pt.SetLength(_slots)
            if _complex:
                z = np.asarray(pt.GetCKKSPackedValueArray())
                out[j * per : j * per + _slots] = z.real
                out[j * per + _slots : (j + 1) * per] = z.imag
            else:
                out[j * per : (j + 1) * per] = np.asarray(pt.GetRealPackedValueArray())
        # Under complex packing OpenFHE has no imaginary part left to estimate its error from, so
        # it decodes whatever the shares give: without every share (or with shares of another
        # ciphertext) the values are uniform modulo Q, ~1e6 in magnitude. A true sum stays below
        # the bound (every site refuses an update that could reach it).
        if not np.all(np.abs(out) < _bound):
            raise ValueError(
                f"the decrypted values exceed the CKKS bound {_bound:g}: a decryption share is missing or belongs "
                "to another ciphertext"
            )
        return {}, [out[:length].tobytes()]
    if op == "forget":
        _keys.pop(header.get("handle"), None)
        _sums.pop(header.get("handle"), None)
        return {}, []
    raise ValueError(f"unknown operation {op!r}")


def _read_exact(stream, n: int) -> bytes:
    buf = stream.read(n)
    if buf is None or len(buf) != n:
        raise EOFError
    return buf


def read_frame(stream) -> tuple[dict, list[bytes]]:
    """One frame: JSON header and blobs."""
    (hlen,) = struct.unpack("<I", _read_exact(stream, 4))
    header = json.loads(_read_exact(stream, hlen))
    (count,) = struct.unpack("<I", _read_exact(stream, 4))
    blobs = []
    for _ in range(count):
        (n,) = struct.unpack("<Q", _read_exact(stream, 8))
        blobs.append(_read_exact(stream, n))
    return header, blobs


def write_frame(stream, header: dict, blobs: list[bytes]) -> None:
    """Write one frame and flush."""
    raw = json.dumps(header).encode()
    parts = [struct.pack("<I", len(raw)), raw, struct.pack("<I", len(blobs))]
    for blob in blobs:
        parts.append(struct.pack("<Q", len(blob)))
        parts.append(blob)
    stream.write(b"".join(parts))
    stream.flush()


def main() -> None:
    """Serve frames on stdin/stdout until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            header, blobs = read_frame(stdin)
        except EOFError:
            return
        try:
            reply, out = handle(header, blobs)
            write_frame(stdout, {"ok": True, **reply}, out)
        except Exception as exc:  # the error travels back as data; the engine stays up
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            if not isinstance(exc, (ValueError, RuntimeError)):
                traceback.print_exc(file=sys.stderr)
            write_frame(stdout, {"ok": False, "error": msg}, [])


if __name__ == "__main__":
    main()
