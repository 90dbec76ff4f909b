"""python -m bridge.loadtest.opusbench [COMPLEXITY@BITRATE ...]: Opus encoder settings for the
SIP -> app direction, offline.

For each of the load test's two voices (espeak-ng) and each SIP leg rate (16 kHz G.722, 8 kHz
G.711 PCMU), the speech goes through the SIP codec alone, then through Opus as `bridge.opus`
codes it with each setting given (default: the one in use, then complexity 5 at the usual voice
bitrates). Printed: the encoder's CPU a 20 ms frame, the bitrate it made, and PESQ (NB, and WB
at 16 kHz) against the speech itself, next to the SIP codec alone's. Used to pick
`opus.COMPLEXITY` and `opus.BITRATE` (docs/performance.md, "Opus: complexity against bitrate").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from pesq import pesq

from .. import codecs, g722, opus
from ..resample import Resampling
from .program import speech


def _resample(x: np.ndarray, source: int, target: int) -> np.ndarray:
    if source == target:
        return x
    resample, n = Resampling(), source // 50
    return np.concatenate([resample(x[i:i + n], source, target) for i in range(0, len(x) - n + 1, n)])


def _sip_codec(rate: int) -> Callable[[np.ndarray], np.ndarray]:
    if rate == g722.SAMPLE_RATE:
        encode, decode = g722.Encoder(), g722.Decoder()
    else:
        encode, decode = codecs.get("PCMU").encoder(), codecs.get("PCMU").decoder()
    return lambda frame: decode(encode(frame))


def _pesq(reference: np.ndarray, degraded: np.ndarray, rate: int) -> tuple[float, float | None]:
    """PESQ NB, and WB at 16 kHz (None at 8)."""
    n = min(len(reference), len(degraded))
    nb = pesq(8000, _resample(reference[:n], rate, 8000), _resample(degraded[:n], rate, 8000), "nb")
    return nb, pesq(16000, reference[:n], degraded[:n], "wb") if rate == 16000 else None


def _aligned(out: np.ndarray, sent: np.ndarray, rate: int) -> np.ndarray:
    """`out` without the coder's delay (found by cross-correlation over the first 3 s)."""
    n = min(len(out), len(sent), 3 * rate)
    lag = int(np.argmax(np.correlate(out[:n].astype(float), sent[:n].astype(float), "full"))) - (n - 1)
    return out[lag:] if lag > 0 else out


@dataclass
class Result:
    setting: str                  # "alone" (the SIP codec alone), or "complexity C at K kbit/s"
    us_a_frame: float | None
    kbps: float | None
    nb: float
    wb: float | None

    def __str__(self) -> str:
        cost = "" if self.us_a_frame is None else f"{self.us_a_frame:4.0f} us a frame, {self.kbps:.0f} kbit/s, "
        wb = "" if self.wb is None else f" WB {self.wb:.2f}"
        return f"{self.setting}: {cost}PESQ NB {self.nb:.2f}{wb}"


def measure(voice: str, rate: int, settings: list[tuple[int, dict[int, int]]], work: Path) -> list[Result]:
    """The SIP codec alone, then Opus with each setting, on `voice` at `rate` (8 or 16 kHz)."""
    reference = _resample(speech(voice, work), 48000, rate)
    n = rate // 50
    sip = _sip_codec(rate)
    sent = np.concatenate([sip(reference[i:i + n]) for i in range(0, len(reference) - n + 1, n)])
    results = [Result("the SIP codec alone", None, None, *_pesq(reference, sent, rate))]
    frames = [sent[i:i + n] for i in range(0, len(sent) - n + 1, n)]
    kept = opus.COMPLEXITY, opus.BITRATE
    try:
        for complexity, bitrates in settings:
            opus.COMPLEXITY, opus.BITRATE = complexity, bitrates
            encode, decode = opus.Encoder(), opus.Decoder()
            start = time.perf_counter()
            packets = [encode(frame, rate) for frame in frames]
            cost = (time.perf_counter() - start) / len(frames)
            out = _resample(np.concatenate([decode(p) for p in packets]), 48000, rate)
            kbps = sum(map(len, packets)) * 8 / (len(packets) * 0.02) / 1000
            results.append(Result(f"complexity {complexity} at {bitrates[rate] // 1000} kbit/s", cost * 1e6, kbps,
                                  *_pesq(reference, _aligned(out, sent, rate), rate)))
    finally:
        opus.COMPLEXITY, opus.BITRATE = kept
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bridge.loadtest.opusbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", metavar="COMPLEXITY@KBITS8/KBITS16",
                        help="e.g. 1@32/48: complexity 1, 32 kbit/s at 8 kHz, 48 at 16 kHz")
    args = parser.parse_args()
    current = (opus.COMPLEXITY, dict(opus.BITRATE))
    settings = [current, (5, {**opus.BITRATE, 8000: 24000, 16000: 32000})]
    if args.settings:
        settings = []
        for text in args.settings:
            complexity, _, rates = text.partition("@")
            narrow, _, wide = rates.partition("/")
            settings.append((int(complexity), {**opus.BITRATE, 8000: int(narrow) * 1000, 16000: int(wide) * 1000}))
    with tempfile.TemporaryDirectory() as work:
        for voice in ("far", "app"):
            for rate in (16000, 8000):
                alone, *coded = measure(voice, rate, settings, Path(work))
                print(f"{voice} voice, {rate // 1000} kHz: {alone}")
                for result in coded:
                    print(f"  {result}")


if __name__ == "__main__":
    main()
