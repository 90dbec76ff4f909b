"""Opus on the app leg, coded by bridge per packet: libopus itself, mono, tuned for voice.

aiortc's own Opus encoder takes 48 kHz stereo at 96 kbit/s, complexity 10, for a call whose other
leg is a desk phone at 8 or 16 kHz: ~120-160 us a 20 ms frame here, most of a transcoded call's
CPU. libopus resamples inside and codes only the band it is given, so this encoder takes the SIP
leg's own rate (8 kHz: ~30 us a frame on speech; 16 kHz: ~45 us) and follows it when it changes
(a transfer to a G.722 phone); the decoder gives the rate it is made for (the phone's), whatever
the stream's, mono. The RTP clock of Opus is 48 kHz at every rate (RFC 7587).

libopus is called directly (ctypes), the copy PyAV ships if there (else the system's, Debian
`libopus0`): through PyAV a frame took ~13 us more to encode (its frame and packet objects), and
FFmpeg's libopus decoder always gives 48 kHz, which the phone's leg then resampled (a 20 ms frame
of speech decoded to 8 kHz: 56 us through PyAV and the resampler, 30 us here).
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import av
import numpy as np

OPUS = "opus"
CLOCK_RATE = 48000
RATES = (8000, 12000, 16000, 24000, 48000)   # what libopus takes in and gives out
# Complexity 1 of 10 at a higher bitrate beats complexity 5 at the usual voice bitrates, at half
# the CPU (offline, the load test's two voices through G.711 or G.722 then Opus, PESQ against the
# SIP codec alone; docs/performance.md, "Opus: complexity against bitrate"): 8 kHz 27 us a frame,
# PESQ -0.01 (complexity 5 at 24 kbit/s: 61 us, -0.03); 16 kHz 47 us, PESQ NB -0.05/-0.08,
# WB -0.07/-0.03 (complexity 5 at 32 kbit/s: 110 us, NB -0.07/-0.06, WB -0.13/-0.04).
BITRATE = {8000: 32000, 12000: 40000, 16000: 48000}   # narrow, medium and wide band voice
COMPLEXITY = 1
MAX_PACKET = 1500

_APPLICATION_VOIP = 2048            # opus_defines.h
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010

# a frame's length in 48 kHz units by the TOC byte's configuration (RFC 6716 3.1): SILK 10-60 ms,
# hybrid 10-20 ms, CELT 2.5-20 ms
_FRAME_UNITS = [480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4


def _library() -> ctypes.CDLL:
    """PyAV's own libopus (a wheel's `av.libs`), so both code alike; else the system's."""
    shipped = sorted(Path(av.__file__).parent.parent.glob("av.libs/libopus*.so*"))
    for name in [*map(str, shipped), "libopus.so.0"]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_encoder_create.restype = lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
        lib.opus_decoder_create.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
        lib.opus_encode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32)
        lib.opus_decode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p,
                                    ctypes.c_int, ctypes.c_int)
        lib.opus_encoder_destroy.argtypes = lib.opus_decoder_destroy.argtypes = (ctypes.c_void_p,)
        lib.opus_strerror.restype = ctypes.c_char_p
        return lib
    raise ImportError("libopus is not installed (Debian: apt-get install libopus0)")


_lib = _library()


def _check(code: int) -> int:
    if code < 0:
        raise ValueError(f"libopus: {_lib.opus_strerror(code).decode()}")
    return code


def packet_units(packet: bytes) -> int:
    """The audio an Opus packet carries, in 48 kHz units (0 for a malformed one)."""
    if not packet:
        return 0
    toc = packet[0]
    count = toc & 3
    frames = 1 if count == 0 else 2 if count < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return _FRAME_UNITS[toc >> 3] * frames


class Encoder:
    """int16 mono frames (20 ms at a rate of `RATES`) -> one Opus packet each."""

    def __init__(self) -> None:
        self._state: int | None = None
        self._rate = 0
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._finalizer: weakref.finalize | None = None

    def _open(self, rate: int) -> int:
        if rate not in RATES:
            raise ValueError(f"Opus cannot take {rate} Hz audio")
        error = ctypes.c_int()
        state = _lib.opus_encoder_create(rate, 1, _APPLICATION_VOIP, ctypes.byref(error))
        _check(error.value)
        finalizer = weakref.finalize(self, _lib.opus_encoder_destroy, state)
        try:
            _check(_lib.opus_encoder_ctl(ctypes.c_void_p(state), _SET_BITRATE, ctypes.c_int(BITRATE.get(rate, 40000))))
            _check(_lib.opus_encoder_ctl(ctypes.c_void_p(state), _SET_COMPLEXITY, ctypes.c_int(COMPLEXITY)))
        except ValueError:
            finalizer()
            raise
        if self._finalizer is not None:       # the stream's encoder at the rate before
            self._finalizer()
        self._state, self._rate, self._finalizer = state, rate, finalizer
        return state

    def __call__(self, pcm: np.ndarray, rate: int) -> bytes:
        state = self._state if rate == self._rate else self._open(rate)
        size = _check(_lib.opus_encode(state, pcm.astype(np.int16, copy=False).tobytes(), len(pcm), self._out, MAX_PACKET))
        return ctypes.string_at(self._out, size)


class Decoder:
    """Opus packets -> int16 mono samples at `rate` (empty for a packet libopus refuses)."""

    def __init__(self, rate: int = CLOCK_RATE) -> None:
        if rate not in RATES:
            raise ValueError(f"Opus cannot give {rate} Hz audio")
        self.rate = rate
        error = ctypes.c_int()
        self._state = _lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        _check(error.value)
        weakref.finalize(self, _lib.opus_decoder_destroy, self._state)
        self._pcm = np.zeros(rate * 120 // 1000, np.int16)       # the longest packet: 120 ms
        self._address = self._pcm.ctypes.data

    def __call__(self, payload: bytes) -> np.ndarray:
        if not payload:                 # libopus would conceal a loss of the buffer's length
            return np.zeros(0, np.int16)
        samples = _lib.opus_decode(self._state, payload, len(payload), self._address, len(self._pcm), 0)
        return self._pcm[:samples].copy() if samples > 0 else np.zeros(0, np.int16)
