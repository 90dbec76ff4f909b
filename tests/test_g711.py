"""G.711 against a scalar port of the ITU-T G.191 reference code, and tone SNR."""

from __future__ import annotations


import numpy as np
import pytest

from bridge import g711

RATE = 8000


# --- scalar ports of ITU-T G.191 STL g711.c (independent of bridge.g711's formulation) ---

def _alaw_compress(lin: int) -> int:
    ix = (~lin) >> 4 if lin < 0 else lin >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if lin >= 0:
        ix |= 0x80
    return (ix ^ 0x55) & 0xFF


def _ulaw_compress(lin: int) -> int:
    absno = (((~lin) >> 2) + 33) if lin < 0 else ((lin >> 2) + 33)
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    out = (high << 4) | low
    if lin >= 0:
        out |= 0x80
    return out


def _alaw_expand(code: int) -> int:
    ix = (code ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 8
    if iexp > 1:
        mant <<= iexp - 1
    return mant if code > 127 else -mant


def _ulaw_expand(code: int) -> int:
    sign = -1 if code < 0x80 else 1
    mantissa = ~code
    exponent = (mantissa >> 4) & 0x7
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


ALL = np.arange(-32768, 32768, dtype=np.int16)


@pytest.mark.parametrize("codec,ref", [("PCMU", _ulaw_compress), ("PCMA", _alaw_compress)])
def test_encode_matches_g191_for_every_sample(codec, ref):
    got = np.frombuffer(g711.encode(codec, ALL), dtype=np.uint8)
    want = np.array([ref(int(x)) for x in range(-32768, 32768)], dtype=np.uint8)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} mismatches, first at {ALL[bad[:5]]}"


@pytest.mark.parametrize("codec,ref", [("PCMU", _ulaw_expand), ("PCMA", _alaw_expand)])
def test_decode_matches_g191_for_every_code(codec, ref):
    got = g711.decode(codec, bytes(range(256)))
    assert got.dtype == np.int16 and got.shape == (256,)
    assert got.tolist() == [ref(c) for c in range(256)]


def test_known_reference_values():
    enc = lambda c, v: g711.encode(c, np.array(v, dtype=np.int16))  # noqa: E731
    # Digital silence and full scale, ITU-T G.711 tables (even bits inverted for A-law).
    assert enc("PCMA", [0, -1, 32767, -32768, 8, -9]) == bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD5, 0x55])
    assert enc("PCMU", [0, -1, 32767, -32768]) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert g711.decode("PCMA", bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert g711.decode("PCMU", bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert g711.PT_PCMU == 0 and g711.PT_PCMA == 8
    assert g711.payload_type("PCMA") == 8
    assert g711.SILENCE_BYTE == {"PCMU": enc("PCMU", [0])[0], "PCMA": enc("PCMA", [0])[0]}


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_decode_encode_is_identity_on_codes(codec):
    levels = g711.decode(codec, bytes(range(256)))
    again = g711.encode(codec, levels)
    # Every code except mu-law's redundant negative zero (0x7F -> 0 -> 0xFF) maps back to itself.
    expect = bytes(c if not (codec == "PCMU" and c == 0x7F) else 0xFF for c in range(256))
    assert again == expect


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    err = test.astype(np.float64) - ref
    return float(10 * np.log10(np.sum(ref * ref) / np.sum(err * err)))


def _sine(freq: float, dbfs: float, n: int, phase: float = 0.3) -> np.ndarray:
    amp = 32767.0 * 10 ** (dbfs / 20)
    t = np.arange(n) / RATE
    return np.round(amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.int16)


def _loopback_snr(codec: str, freq: float, dbfs: float, phases: int = 64) -> tuple[float, float]:
    """(aggregate, worst) full-band SNR of encode->decode against the original over ``phases``.

    An exact 1 kHz tone has an 8-sample period at 8 kHz, so its quantisation error depends on
    the starting phase; aggregating over phases measures the codec, not one lucky phase.
    """
    signal = noise = 0.0
    worst = float("inf")
    # Evenly spread phases with an irrational offset (multiples of pi/8 are degenerate grids).
    for phase in np.linspace(0.0, 2 * np.pi, phases, endpoint=False) + 1 / np.sqrt(2):
        pcm = _sine(freq, dbfs, RATE // 4, phase)
        out = g711.decode(codec, g711.encode(codec, pcm))
        ref = pcm.astype(np.float64)
        err = out.astype(np.float64) - ref
        signal += float(np.sum(ref * ref))
        noise += float(np.sum(err * err))
        worst = min(worst, _snr_db(pcm, out))
    return 10 * np.log10(signal / noise), worst


# Full-band G.711 SNR of a -30 dBFS (peak) sine is codec-inherent: mu-law sits in a dip of its
# SNR-vs-level curve there. The 1 kHz tone (the measure) reaches 35.0 dB (PCMU) and
# 37.4 dB (PCMA); the 1004 Hz test tone, which walks every phase, gives 34.9 / 36.8 dB
# (CPython's audioop gives 34.7 dB for mu-law too).
MIN_SNR_30DBFS = {(1000.0, "PCMU"): 35.0, (1000.0, "PCMA"): 35.0,
                  (1004.0, "PCMU"): 34.5, (1004.0, "PCMA"): 35.0}


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
@pytest.mark.parametrize("freq", [1000.0, 1004.0])
def test_sine_loopback_snr_minus_30_dbfs(codec, freq):
    snr, worst = _loopback_snr(codec, freq, -30.0)
    print(f"{codec} {freq:g} Hz -30 dBFS: SNR {snr:.2f} dB (worst phase {worst:.2f} dB)")
    assert snr >= MIN_SNR_30DBFS[freq, codec]
    # A broken table (or 8-bit audio, pyVoIP: 5.3 dB) cannot land in G.711's 34-45 dB band.
    assert snr < 45.0


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_sine_loopback_snr_minus_33_dbfs(codec):
    # The level of the reference measurement (36.4 dB on 16-bit G.711): >= 35 dB for both laws.
    snr, worst = _loopback_snr(codec, 1000.0, -33.0)
    print(f"{codec} 1000 Hz -33 dBFS: SNR {snr:.2f} dB (worst phase {worst:.2f} dB)")
    assert snr >= 35.0


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_snr_is_roughly_level_independent(codec):
    # Logarithmic companding: SNR stays in a narrow band from -30 to -3 dBFS.
    snrs = [_loopback_snr(codec, 1004.0, level, phases=1)[0] for level in (-30.0, -20.0, -10.0, -3.0)]
    assert min(snrs) >= 34.5 and max(snrs) - min(snrs) < 5.0, snrs


def test_input_types_and_errors():
    with pytest.raises(ValueError):
        g711.encode("G722", np.zeros(160, dtype=np.int16))
    with pytest.raises(ValueError):
        g711.decode("opus", b"\x00")
    # Non-int16 input is converted, empty input works, a non-contiguous view works.
    assert g711.encode("PCMU", np.zeros(4, dtype=np.int32)) == b"\xff" * 4
    assert g711.encode("PCMA", np.zeros(0, dtype=np.int16)) == b""
    x = _sine(1000.0, -10.0, 320)
    assert g711.encode("PCMA", x[::2]) == g711.encode("PCMA", x[::2].copy())
    out = g711.decode("PCMU", b"\xff" * 160)
    out[0] = 1  # decoded arrays are writable copies, the table is not touched
    assert g711.decode("PCMU", b"\xff")[0] == 0
