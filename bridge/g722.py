"""ITU-T G.722 (wideband: 16 kHz audio in 64 kbit/s) for 16-bit linear PCM, by spandsp and FFmpeg.

The codec is not written here. The encoder is spandsp's (Debian `libspandsp2`, the one Asterisk,
FreeSWITCH and baresip use), called directly (ctypes), or FFmpeg's through PyAV where the system
has no spandsp: both follow ITU's reference algorithm, the same bytes out of the same samples
(tests/test_g722.py holds them to it). Through PyAV a 20 ms frame took 76 us to encode among a
load test's 8 calls (20 us in a tight loop): PyAV puts an encoder's input through a filter graph
to cut it into the codec's frame size, and each graph starts a pool of threads; spandsp's took
21 us there. The decoder is FFmpeg's: spandsp's does not saturate its output (a loud packet, or
garbage, wraps from +32767 to -32768: a crack), FFmpeg's clips as ITU's reference does.

G.722 is ADPCM: an `Encoder` and a `Decoder` keep state from one frame to the next, so each RTP
stream has its own, fed in order. A 20 ms frame is 320 samples in, 160 bytes out (and back); the
codec adds no delay beyond its filter (22 samples, 1.4 ms, measured encode -> decode).

The RTP clock of G.722 is 8000 Hz although it samples at 16 kHz (RFC 3551 4.5.2, an error kept
for compatibility): timestamps advance 160 per 20 ms frame, one per payload byte, as G.711's do.
"""

from __future__ import annotations

import ctypes
import fractions
import weakref

import av
import numpy as np

G722 = "G722"
PAYLOAD_TYPE = 9              # static (RFC 3551)
CLOCK_RATE = 8000             # RTP timestamp units per second
SAMPLE_RATE = 16000           # audio samples per second
SAMPLES_PER_UNIT = SAMPLE_RATE // CLOCK_RATE
BIT_RATE = 64000
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


def _spandsp() -> ctypes.CDLL | None:
    """spandsp's library with its G.722 calls typed, or None where the system has none."""
    try:
        lib = ctypes.CDLL("libspandsp.so.2")
    except OSError:
        return None
    lib.g722_encode_init.restype = ctypes.c_void_p
    lib.g722_encode_init.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
    lib.g722_encode.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
    lib.g722_encode_free.argtypes = (ctypes.c_void_p,)
    return lib


_spandsp_lib = _spandsp()


class SpandspEncoder:
    """int16 samples at 16 kHz -> G.722 bytes (half as many bytes as samples), by spandsp."""

    def __init__(self) -> None:
        if _spandsp_lib is None:
            raise RuntimeError("spandsp is not installed (Debian: apt-get install libspandsp2)")
        self._state = _spandsp_lib.g722_encode_init(None, BIT_RATE, 0)
        if not self._state:
            raise MemoryError("spandsp: g722_encode_init failed")
        weakref.finalize(self, _spandsp_lib.g722_encode_free, self._state)
        self._out = ctypes.create_string_buffer(SAMPLE_RATE // 50 // 2)
        self._held = b""                # G.722 codes samples in pairs: an odd one waits for the next

    def __call__(self, pcm: np.ndarray) -> bytes:
        data = pcm.astype(np.int16, copy=False).tobytes()
        if self._held or len(pcm) % 2:
            data = self._held + data
            odd = len(data) % 4
            data, self._held = data[:len(data) - odd], data[len(data) - odd:]
        if len(data) > 4 * len(self._out):
            self._out = ctypes.create_string_buffer(len(data) // 4)
        size = _spandsp_lib.g722_encode(self._state, self._out, data, len(data) // 2)
        return ctypes.string_at(self._out, size)


def _context(mode: str) -> av.AudioCodecContext:
    codec = av.CodecContext.create("g722", mode)
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = SAMPLE_RATE
    if mode == "w":
        codec.time_base = _TIME_BASE
    return codec


class FFmpegEncoder:
    """int16 samples at 16 kHz -> G.722 bytes (half as many bytes as samples), by FFmpeg."""

    def __init__(self) -> None:
        self._codec = _context("w")
        self._pts = 0

    def __call__(self, pcm: np.ndarray) -> bytes:
        samples = np.ascontiguousarray(pcm, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += len(samples)
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


class FFmpegDecoder:
    """G.722 bytes -> int16 samples at 16 kHz (two per byte), by FFmpeg."""

    def __init__(self) -> None:
        self._codec = _context("r")

    def __call__(self, payload: bytes) -> np.ndarray:
        if not payload:
            return np.zeros(0, np.int16)
        frames = self._codec.decode(av.Packet(payload))
        if len(frames) == 1:
            return frames[0].to_ndarray().reshape(-1)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]) if frames else np.zeros(0, np.int16)


Encoder: type[SpandspEncoder] | type[FFmpegEncoder] = SpandspEncoder if _spandsp_lib else FFmpegEncoder
Decoder = FFmpegDecoder
