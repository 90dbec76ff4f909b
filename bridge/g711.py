"""ITU-T G.711 mu-law (PCMU) and A-law (PCMA) for 16-bit linear PCM.

Bit-exact with the ITU-T G.191 reference software (STL ``g711.c``) and spandsp: negative
inputs use one's complement magnitude.  Both directions are numpy table look-ups built once
at import: a 65536-entry encode table indexed by the sample's 16 bits and a 256-entry decode
table indexed by the code byte.  No ``audioop``.
"""

from __future__ import annotations

import functools

import numpy as np

PCMU = "PCMU"
PCMA = "PCMA"
PT_PCMU = 0
PT_PCMA = 8
CLOCK_RATE = 8000
PAYLOAD_TYPES: dict[str, int] = {PCMU: PT_PCMU, PCMA: PT_PCMA}
CODECS: tuple[str, ...] = tuple(PAYLOAD_TYPES)
CODEC_OF_PAYLOAD_TYPE: dict[int, str] = {pt: codec for codec, pt in PAYLOAD_TYPES.items()}
# Code bytes of digital silence (encode(0)).
SILENCE_BYTE: dict[str, int] = {PCMU: 0xFF, PCMA: 0xD5}

_ULAW_BIAS = 0x84


def _top_bit(values: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of positive integers (vectorised)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64) - 1


def _build_tables() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    linear = np.arange(-32768, 32768, dtype=np.int64)
    negative = linear < 0
    magnitude = np.where(negative, ~linear, linear)  # one's complement for negatives

    # mu-law: biased magnitude, segment = position of the top bit above bit 7.
    biased = magnitude + _ULAW_BIAS
    seg = _top_bit(biased | 0xFF) - 7
    mask = np.where(negative, 0x7F, 0xFF)
    mantissa = (biased >> np.minimum(seg + 3, 15)) & 0x0F
    ulaw = np.where(seg >= 8, 0x7F ^ mask, ((seg << 4) | mantissa) ^ mask)

    # A-law: segment 0 and 1 share the same step (shift 4).
    seg = _top_bit(magnitude | 0xFF) - 7
    mask = np.where(negative, 0x55, 0xD5)
    shift = np.where(seg == 0, 4, seg + 3)
    mantissa = (magnitude >> np.minimum(shift, 15)) & 0x0F
    alaw = np.where(seg >= 8, 0x7F ^ mask, ((seg << 4) | mantissa) ^ mask)

    # Re-index so that the table is addressed by the sample's bits read as uint16.
    order = linear.astype(np.int16).view(np.uint16)
    enc = {}
    for name, table in ((PCMU, ulaw), (PCMA, alaw)):
        by_bits = np.empty(65536, dtype=np.uint8)
        by_bits[order] = table.astype(np.uint8)
        by_bits.setflags(write=False)
        enc[name] = by_bits

    code = np.arange(256, dtype=np.int64)
    # mu-law expand
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    ulaw_dec = np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS)
    # A-law expand
    a = code ^ 0x55
    exp = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(exp == 0, t + 8, (t + 0x108) << np.maximum(exp - 1, 0))
    alaw_dec = np.where(a & 0x80, t, -t)
    dec = {}
    for name, table in ((PCMU, ulaw_dec), (PCMA, alaw_dec)):
        arr = table.astype(np.int16)
        arr.setflags(write=False)
        dec[name] = arr
    return enc, dec


ENCODE_TABLES, DECODE_TABLES = _build_tables()


def _tables(codec: str, tables: dict[str, np.ndarray]) -> np.ndarray:
    try:
        return tables[codec]
    except KeyError:
        raise ValueError(f"unsupported G.711 codec {codec!r} (expected PCMU or PCMA)") from None


def encode(codec: str, pcm: np.ndarray) -> bytes:
    """Encode int16 samples to G.711 code bytes (one byte per sample)."""
    samples = np.asarray(pcm)
    if samples.dtype != np.int16:
        samples = samples.astype(np.int16)
    return _tables(codec, ENCODE_TABLES)[samples.view(np.uint16)].tobytes()


def decode(codec: str, payload: bytes) -> np.ndarray:
    """Decode G.711 code bytes to int16 samples (a new writable array)."""
    return _tables(codec, DECODE_TABLES)[np.frombuffer(payload, dtype=np.uint8)]


def payload_type(codec: str) -> int:
    """Static RTP payload type of ``codec`` (0 for PCMU, 8 for PCMA)."""
    try:
        return PAYLOAD_TYPES[codec]
    except KeyError:
        raise ValueError(f"unsupported G.711 codec {codec!r}") from None


def convert(payload: bytes, source: str, target: str) -> bytes:
    """G.711 code bytes of law `source` in law `target` (the same bytes if the laws agree)."""
    return payload if source == target else payload.translate(_translation(source, target))


@functools.lru_cache(maxsize=None)
def _translation(source: str, target: str) -> bytes:
    """A `bytes.translate` table between the laws. G.711 Annex A defines mu-law <-> A-law as a
    byte-to-byte mapping; going through the linear value of each code is the same mapping."""
    linear = _tables(source, DECODE_TABLES)[np.arange(256)]
    return _tables(target, ENCODE_TABLES)[linear.astype(np.int16).view(np.uint16)].tobytes()
