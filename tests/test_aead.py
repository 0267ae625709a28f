"""AES-SIV on both paths: RFC 5297 vectors, pinned packet vectors, byte-identity, tampering."""

import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopaths import PATHS, context_class
from vpncrypt.protocol import aead, keys, wire

# RFC 5297 appendix A.1 (deterministic) and A.2 (nonce-based: the nonce is the last AD component).
RFC5297 = [
    (
        "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        ["101112131415161718191a1b1c1d1e1f2021222324252627"],
        "112233445566778899aabbccddee",
        "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c",
    ),
    (
        "7f7e7d7c7b7a79787776757473727170404142434445464748494a4b4c4d4e4f",
        [
            "00112233445566778899aabbccddeeffdeaddadadeaddadaffeeddccbbaa99887766554433221100",
            "102030405060708090a0",
            "09f911029d74e35bd84156c5635688c0",
        ],
        "7468697320697320736f6d6520706c61696e7465787420746f20656e6372797074207573696e67205349562d414553",
        "7bdb6e3b432667eb06f4d14bff2fbd0fcb900f2fddbe404326601965c889bf17"
        "dba77ceb094fa663b7a3f748ba8af829ea64ad544a272e9c485b62a3fd5c0d",
    ),
]

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "vectors", "packets.json")))[
    "vectors"
]


def native_module():
    context_class("native")
    from vpncrypt import _fast

    return _fast


@pytest.mark.parametrize("key,ads,pt,expected", RFC5297)
def test_rfc5297_native(key, ads, pt, expected):
    fast = native_module()
    key, ads, pt = bytes.fromhex(key), [bytes.fromhex(a) for a in ads], bytes.fromhex(pt)
    assert fast.rfc5297(True, key, ads, pt).hex() == expected
    assert fast.rfc5297(False, key, ads, bytes.fromhex(expected)) == pt
    tampered = bytearray.fromhex(expected)
    tampered[3] ^= 0x40
    assert fast.rfc5297(False, key, ads, bytes(tampered)) is None


@pytest.mark.parametrize("key,ads,pt,expected", RFC5297)
def test_rfc5297_reference(key, ads, pt, expected):
    siv = AESSIV(bytes.fromhex(key))
    ads = [bytes.fromhex(a) for a in ads]
    assert siv.encrypt(bytes.fromhex(pt), ads).hex() == expected


def test_hkdf_rfc5869_case1():
    okm = keys.hkdf_sha256(
        bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hmac_and_hkdf_agree_with_the_standard_library():
    import hashlib
    import hmac
    import random

    rng = random.Random(5869)
    for n in list(range(0, 140)) + [1000]:
        key = rng.randbytes(n)
        msg = rng.randbytes(rng.randint(0, 200))
        assert keys._hmac(keys._hmac_key(key), msg) == hmac.digest(key, msg, "sha256")
    for salt in (keys.SALT, b"", b"other salt", bytes(100)):
        ikm, info = rng.randbytes(32), rng.randbytes(rng.randint(0, 40))
        for length in (1, 32, 42, 64, 65, 200):
            prk = hmac.new(salt, ikm, hashlib.sha256).digest()
            okm, block, i = b"", b"", 0
            while len(okm) < length:  # RFC 5869, written out
                i += 1
                block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
                okm += block
            assert keys.hkdf_sha256(ikm, salt, info, length) == okm[:length]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_packet_vectors(path, vec):
    cls = context_class(path)
    psk = bytes.fromhex(vec["psk"])
    key = keys.direction_key(psk, vec["direction"].encode(), vec["server_id"], vec["client_id"])
    assert key.hex() == vec["siv_key"]
    ctx = cls(key, vec["client_id"], vec["server_id"])
    body = bytes.fromhex(vec["body"])
    packet = ctx.seal(vec["type"], vec["timestamp"], vec["counter"], body)
    assert packet.hex() == vec["packet"]
    assert len(packet) == len(body) + wire.OVERHEAD
    assert ctx.open(packet, vec["timestamp"]) == body
    assert ctx.open(packet, vec["timestamp"] + 1) is None


def test_selected_path_reported():
    cls, name = aead.select()
    assert name in ("native", "reference")
    if os.environ.get("CI"):
        assert name == "native", "CI must run the native path"
    assert aead.select("reference") == (aead.ReferenceSivContext, "reference")


meta = st.tuples(
    st.integers(0, 255), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
)


@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=64, max_size=64), m=meta,
       body=st.one_of(st.binary(min_size=1, max_size=2000),
                      st.integers(wire.MAX_BODY - 64, wire.MAX_BODY).map(lambda n: b"\xa5" * n)))
def test_native_equals_reference_and_round_trips(key, m, body):
    ptype, ts, counter, client_id, server_id = m
    native = context_class("native")(key, client_id, server_id)
    ref = aead.ReferenceSivContext(key, client_id, server_id)
    packet = native.seal(ptype, ts, counter, body)
    assert packet == ref.seal(ptype, ts, counter, body)
    assert native.open(packet, ts) == body
    assert ref.open(packet, ts) == body


# Every tail shape of S2V (1-15 bytes, whole blocks, D across two blocks) and the native
# core's 2048-byte work chunks, with the same key used over and over (its CBC chain
# carries on from packet to packet).
EDGE_SIZES = [*range(1, 50), 63, 64, 65, 2031, 2032, 2033, 2047, 2048, 2049, 2064, 2065,
              4096, 4113, 6150, wire.MAX_BODY]


def test_native_equals_reference_at_edge_sizes():
    key = bytes(range(64))
    native = context_class("native")(key, 3, 9)
    ref = aead.ReferenceSivContext(key, 3, 9)
    for i, n in enumerate(EDGE_SIZES * 2):
        body = bytes((i + j * 7) & 0xFF for j in range(n))
        packet = native.seal(1, 1000 + i, i, body)
        assert packet == ref.seal(1, 1000 + i, i, body), n
        assert native.open(packet, 1000 + i) == body
        bad = bytearray(packet)
        bad[-1] ^= 1
        assert native.open(bytes(bad), 1000 + i) is None
        assert native.open(packet, 1000 + i) == body  # a failed open leaves the key usable


@pytest.mark.parametrize("path", PATHS)
def test_size_limits(path):
    ctx = context_class(path)(bytes(64), 1, 0)
    with pytest.raises(ValueError):
        ctx.seal(1, 0, 0, b"")  # OpenSSL 3.0 cannot seal an empty body: refuse it clearly
    with pytest.raises(ValueError):
        ctx.seal(1, 0, 0, bytes(wire.MAX_BODY + 1))
    packet = ctx.seal(1, 0, 0, bytes(wire.MAX_BODY))
    assert len(packet) == wire.MAX_DATAGRAM
    assert ctx.open(packet, 0) == bytes(wire.MAX_BODY)
    assert ctx.open(packet + b"\x00", 0) is None
    for n in range(0, wire.MIN_PACKET):
        assert ctx.open(packet[:n], 0) is None


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=60, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), data=st.data())
def test_any_bit_flip_rejected(path, body, data):
    ctx = context_class(path)(b"\x11" * 64, 5, 9)
    packet = ctx.seal(1, 1000, 77, body)
    bit = data.draw(st.integers(0, len(packet) * 8 - 1))
    flipped = bytearray(packet)
    flipped[bit // 8] ^= 1 << (bit % 8)
    # The receiver rebuilds the AD from the (flipped) header, exactly as on the wire.
    assert ctx.open(bytes(flipped), 1000) is None


@pytest.mark.parametrize("size", [1, 15, 16, 17, 64, 512, 1420, 2049])
def test_bench_siv_runs_the_real_seal_and_open(size):
    # bench/crypto_bench.py's "native (engine loop)" figure comes from _fast.bench_siv: its
    # packets must be the real ones, or the figure would time some other code.
    fast = native_module()
    key = bytes((i * 37 + 11) & 0xFF for i in range(64))
    ctx = fast.SivContext(key, 7, 0x5EC0DE01)
    ref = aead.ReferenceSivContext(key, 7, 0x5EC0DE01)
    body = bytes((i * 13 + 5) & 0xFF for i in range(size))
    ts = 1_700_000_000 + size
    for count in (1, 3):
        ns, packet = fast.bench_siv(ctx, "seal", body, ts, count)
        assert ns >= 0
        # counters 0..count-1 were sealed; the last packet is returned
        assert packet == ctx.seal(1, ts, count - 1, body) == ref.seal(1, ts, count - 1, body)
        assert fast.bench_siv(ctx, "open", packet, ts, count)[1] == body
    assert fast.bench_siv(ctx, "seal", body, ts, 2, ptype=0x81)[1] == ref.seal(0x81, ts, 1, body)
    # Its open checks the tag like the engine: a flipped bit or a wrong timestamp fails.
    bad = bytearray(packet)
    bad[-1] ^= 1
    with pytest.raises(RuntimeError):
        fast.bench_siv(ctx, "open", bytes(bad), ts, 2)
    with pytest.raises(RuntimeError):
        fast.bench_siv(ctx, "open", packet[:3] + bytes([packet[3] ^ 1]) + packet[4:],
                       ts ^ 1, 2)
    with pytest.raises(ValueError):
        fast.bench_siv(ctx, "encrypt", body, ts, 1)
