"""Ringback: each national tone by its spectrum and cadence, a WAV file, the config keys, and a
route's own ringback heard by an app caller while a real desk phone (baresip) rings."""

from __future__ import annotations

import asyncio
import logging
import wave

import numpy as np
import pytest

from bridge import config
from bridge.audio import RATE, tone_analysis
from bridge.ringback import TONES, Ringback, Ringbacks
from parties import Party
from stack import ROOT, kamailio, start_bridge  # noqa: F401  (fixtures)
from testbed import tone_wav
from testbed.fixtures import baresip_factory, kamailio_factory  # noqa: F401

# (frequencies, cadence on/off seconds, amplitude modulation Hz): ITU-T E.180 Supplement 2
EXPECTED = {
    "us": ((440, 480), [2.0, 4.0], 0),
    "uk": ((400, 450), [0.4, 0.2, 0.4, 2.0], 0),
    "eu": ((425,), [1.0, 4.0], 0),
    "jp": ((400,), [1.0, 2.0], 16),
}


def cadence(samples: np.ndarray, rate: int, frame: float = 0.01) -> list[tuple[bool, float]]:
    """Runs of sound and silence: [(sounding, seconds), ...], by 10 ms frames."""
    n = int(rate * frame)
    frames = samples[: len(samples) // n * n].astype(np.float64).reshape(-1, n)
    loud = np.sqrt((frames ** 2).mean(axis=1)) > 30
    runs: list[tuple[bool, float]] = []
    for value in loud:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + frame)
        else:
            runs.append((bool(value), frame))
    return [(on, round(seconds, 2)) for on, seconds in runs]


def peaks(samples: np.ndarray, rate: int, count: int) -> list[float]:
    """The `count` strongest frequencies (local maxima of a Hann-windowed spectrum), ascending."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    local = [i for i in range(1, len(spectrum) - 1) if spectrum[i - 1] < spectrum[i] >= spectrum[i + 1]]
    best = sorted(local, key=lambda i: spectrum[i], reverse=True)[:count]
    return sorted(float(freqs[i]) for i in best)


def share_near(samples: np.ndarray, rate: int, targets, width: float = 15) -> float:
    """The share of the spectrum's energy within `width` Hz of any of `targets`."""
    x = samples.astype(np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    near = np.zeros(len(freqs), bool)
    for f in targets:
        near |= np.abs(freqs - f) <= width
    return float(power[near].sum() / power.sum())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("rate", [8000, 16000, RATE])      # G.711, G.722, Opus
def test_each_tone_has_its_frequencies_cadence_and_level(name, rate):
    frequencies, expected_cadence, modulation = EXPECTED[name]
    cycle = Ringback(name).samples(rate)
    assert len(cycle) == round(sum(expected_cadence) * rate)
    runs = cadence(np.concatenate([cycle, cycle]), rate)      # two cycles: the loop joins cleanly
    assert [on for on, _ in runs] == [True, False] * len(expected_cadence)
    assert [s for _, s in runs] == pytest.approx(expected_cadence * 2, abs=0.021), runs
    on = cycle[: round(expected_cadence[0] * rate)]
    assert 20 * np.log10(np.abs(cycle).max() / 32767) == pytest.approx(-19, abs=0.3)
    if modulation:                        # a carrier with sidebands at +-16 Hz; the envelope beats at 16 Hz
        assert peaks(on, rate, 3) == pytest.approx(
            [frequencies[0] - modulation, frequencies[0], frequencies[0] + modulation], abs=1.5)
        envelope = np.abs(on.astype(np.float64))
        window = round(rate / frequencies[0])            # one carrier period: smooths the carrier away
        envelope = np.convolve(envelope, np.ones(window) / window, mode="same")
        envelope -= envelope.mean()
        spectrum = np.abs(np.fft.rfft(envelope * np.hanning(len(envelope))))
        freqs = np.fft.rfftfreq(len(envelope), 1 / rate)
        band = (freqs > 5) & (freqs < 60)
        assert freqs[band][np.argmax(spectrum[band])] == pytest.approx(modulation, abs=1.5)
    else:
        assert peaks(on, rate, len(frequencies)) == pytest.approx(list(frequencies), abs=1.5)
    assert share_near(on, rate, [f + d for f in frequencies for d in (-modulation, 0, modulation)]) > 0.99


def test_the_tones_are_the_configs_names():
    assert set(TONES) == set(config.RINGBACK_TONES) == set(EXPECTED)


def test_a_wav_ringback_is_mixed_down_resampled_and_a_broken_one_falls_back(tmp_path, caplog):
    path = tmp_path / "rb.wav"
    t = np.arange(44100 * 2) / 44100
    tone = (8000 * np.sin(2 * np.pi * 600 * t)).astype(np.int16)
    with wave.open(str(path), "wb") as w:                   # 44.1 kHz stereo
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.column_stack([tone, tone]).astype("<i2").tobytes())
    ringbacks = Ringbacks()
    for rate in (8000, RATE):
        samples = ringbacks.get(str(path), rate)
        assert abs(len(samples) - 2 * rate) <= rate // 100
        freq, snr = tone_analysis(samples, rate)
        assert abs(freq - 600) < 3 and snr > 30, (rate, freq, snr)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with caplog.at_level(logging.ERROR, "bridge.call"):
        first = ringbacks.get(str(broken), 8000)
        again = ringbacks.get(str(broken), RATE)
    assert np.array_equal(first, Ringback("us").samples(8000)) and len(again) == 6 * RATE
    assert len([r for r in caplog.records if "cannot be read" in r.message]) == 1    # logged once
    assert np.array_equal(ringbacks.get(None, 8000), Ringback("us").samples(8000))   # the default


def test_ringback_keys_in_the_config(tmp_path):
    wav = tone_wav(tmp_path / "rb.wav", 500, 1.0)
    text = (ROOT / "config.yaml").read_text()
    text = text.replace("  media: relay ", "  ringback: JP\n  media: relay ")
    text = text.replace("      max_calls: 50\n  to_app:", f"      max_calls: 50\n      ringback: {wav.name}\n  to_app:")
    cfg = config.loads(text, str(tmp_path / "c.yaml"), env={})
    assert cfg.bridge.ringback == "jp"
    assert cfg.router.to_sip[0].ringback == str(wav)                 # relative to the config file
    assert config.loads((ROOT / "config.yaml").read_text(), "c.yaml", env={}).bridge.ringback == "us"
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    (tmp_path / "empty.wav").write_bytes(b"")
    for value, message in (("fr", "must be us, uk, eu, jp or a .wav file"),
                           ("7", "must be us, uk, eu, jp or a .wav file"),
                           ("missing.wav", "cannot read"),
                           (str(eight_bit), "is 8-bit: give a 16-bit PCM WAV file"),
                           (str(tmp_path / "empty.wav"), "is not a PCM WAV file")):
        bad = text.replace("  ringback: JP\n", f"  ringback: {value}\n")
        with pytest.raises(config.ConfigError) as err:
            config.loads(bad, str(tmp_path / "c.yaml"), env={})
        line = bad.splitlines().index(f"  ringback: {value}") + 1
        assert any(e.startswith(f"{tmp_path / 'c.yaml'}:{line}: bridge.ringback: ") and message in e
                   for e in err.value.errors), (value, err.value.errors)
    bad = text.replace(f"      ringback: {wav.name}\n", "      ringback: ringing\n")
    with pytest.raises(config.ConfigError) as err:
        config.loads(bad, str(tmp_path / "c.yaml"), env={})
    assert any("routes.to_sip[0].ringback: must be us, uk, eu, jp" in e for e in err.value.errors), err.value.errors


async def test_a_routes_own_ringback_is_heard_while_the_phone_rings(start_bridge, kamailio, baresip_factory):  # noqa: F811
    def uk_route(d: dict) -> None:
        d["routes"]["to_sip"].insert(0, {
            "name": "uk-desks", "match": {"service": "demo-desk", "user": "uk-(?P<ext>\\d{4})"},
            "target": "{ext}", "ringback": "uk"})
    bridge = await start_bridge(uk_route)
    phone = baresip_factory("2001", kamailio, answermode="manual", tone_hz=700)
    alice = Party(bridge.platform_url, "alice")
    await alice.make_call(("uk-2001", "demo-desk"), bridge.token("alice"))
    await asyncio.to_thread(phone.wait_incoming, 10)
    await asyncio.sleep(4.5)                                        # ringing: a cycle and a half
    heard = alice.heard.samples[-4 * RATE:]
    runs = cadence(heard, RATE)[1:-1]                               # whole runs only
    pattern = [(on, s) for on, s in runs]
    # 0.4 on, 0.2 off, 0.4 on, 2.0 off, again (frames of 20 ms at the far end: +-40 ms)
    ons = [s for on, s in pattern if on]
    offs = [s for on, s in pattern if not on]
    assert ons and all(abs(s - 0.4) <= 0.045 for s in ons), pattern
    assert any(abs(s - 0.2) <= 0.045 for s in offs) and any(abs(s - 2.0) <= 0.045 for s in offs), pattern
    loud = np.concatenate([chunk for chunk in np.array_split(heard, len(heard) // 480)
                           if np.sqrt(np.mean(chunk.astype(float) ** 2)) > 100])
    assert share_near(loud, RATE, (400, 450)) > 0.85, peaks(loud, RATE, 4)
    assert peaks(loud, RATE, 2) == pytest.approx([400, 450], abs=4)
    assert alice.call.state == "calling"
    await asyncio.to_thread(phone.accept)
    await asyncio.wait_for(alice.events.connected.wait(), 5)
    await asyncio.sleep(4)
    freq, snr = tone_analysis(alice.heard.samples[-int(1.5 * RATE):])
    assert abs(freq - 700) < 14 and snr > 20, (freq, snr)          # then the phone itself
    await alice.call.end_call()
