"""What the run's packets tell, per call and direction: latency, loss, lateness, stalls, PESQ
(measured by `measures`; summed up by `summary`)."""

from __future__ import annotations

import logging

import numpy as np

from .. import g711
from .measures import _latencies, _narrowband, _pesq, _playout, _since, _wire_stats
from .program import Program, SIP_RATE, Sender, _resample
from .record import CallRecord

log = logging.getLogger("bridge.loadtest")


class Analysis:
    """The load test's analysis of its calls (a part of `LoadTest`)."""

    def _analyse(self) -> dict:
        recs = sorted(self.records.values(), key=lambda r: r.index)
        per_call = {}
        for rec in recs:
            per_call[rec.index] = {
                "app_to_sip": self._direction_far(rec) if rec.t0 is not None else {},
                "sip_to_app": self._direction_app(rec) if rec.t0 is not None else {},
            }
        good = [r for r in recs if r.state == "done"]
        k = min(self.args.pesq_calls, len(good))
        chosen = {good[int(j * len(good) / k)].index for j in range(k)} if k else set()
        for rec in recs:
            if rec.index in chosen:
                per_call[rec.index]["app_to_sip"]["pesq"] = self._pesq_far(rec)
                per_call[rec.index]["sip_to_app"]["pesq"] = self._pesq_app(rec)
        return per_call

    def _direction_far(self, rec: CallRecord) -> dict:
        """app -> SIP, at the far end's socket: G.711 or G.722 packets."""
        out = self._packet_direction(rec, rec.far_packets, rec.codec, rec.app_sender, self.app_program)
        out["far_end_rtp"] = rec.far_stats
        return self._relative(out)

    def _packet_direction(self, rec: CallRecord, packets: list, codec: str, sender: Sender,
                        program: Program) -> dict:
        """Wire statistics and burst latencies of one direction received as G.711 or G.722 packets
        (arrival, seq, ts, payload), from shortly before the programs started."""
        assert rec.t0 is not None
        decode = _narrowband(codec or g711.PCMU)
        stream = [(a, seq, ts, decode(payload)) for a, seq, ts, payload in _since(packets, rec.t0)]
        out = _wire_stats([(a, seq, ts) for a, seq, ts, _ in stream], SIP_RATE, rec.t0, self.args.duration)
        out.update(_latencies(stream, SIP_RATE, sender, program, rec.t0))
        return out

    def _direction_app(self, rec: CallRecord) -> dict:
        """SIP -> app, at the app side's aiortc receiver: packets, decoded frames by pts (both on
        the RTP clock of the negotiated codec: 48 kHz Opus or 8 kHz G.711)."""
        assert rec.t0 is not None
        if rec.app_raw:
            out = self._packet_direction(rec, rec.app_raw, rec.app_codec, rec.far_sender, self.far_program)
            out["aiortc_inbound"] = rec.app_stats
            return self._relative(out)
        out = _wire_stats(_since(rec.app_packets, rec.t0), rec.app_rate, rec.t0, self.args.duration)
        arrival = self._app_arrivals(rec)
        stream = []
        unmatched = 0
        for pts, samples in rec.app_frames:
            a = arrival.get(pts % (1 << 32))
            if a is None:
                unmatched += 1
                continue
            if a >= rec.t0 - 0.2:
                stream.append((a, 0, pts, samples))
        out.update(_latencies(stream, rec.app_rate, rec.far_sender, self.far_program, rec.t0))
        out["frames_without_packet_time"] = unmatched
        out["aiortc_inbound"] = rec.app_stats
        return self._relative(out)

    def _relative(self, out: dict) -> dict:
        """Loop times -> seconds since the run's start (for the chart)."""
        out["latency_t_s"] = [round(t - self.t_zero, 3) for t in out.pop("latency_t_abs", [])]
        out["late_times_s"] = [round(t - self.t_zero, 3) for t in out.pop("late_t_abs", [])]
        return out

    @staticmethod
    def _app_arrivals(rec: CallRecord) -> dict[int, float]:
        """pts of a decoded frame -> arrival of its packet. aiortc 1.16 hands frames over with
        pts = RTP timestamp - the first packet's timestamp (its TimestampMapper)."""
        if not rec.app_packets:
            return {}
        origin = rec.app_packets[0][2]
        return {(ts - origin) % (1 << 32): a for a, _, ts in rec.app_packets}

    def _pesq_far(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        deg = _playout(_since(rec.far_packets, rec.t0), rec.codec or g711.PCMU)
        return _pesq(self.app_program.speech8k, deg)

    def _pesq_app(self, rec: CallRecord) -> dict:
        assert rec.t0 is not None
        if rec.app_raw:         # played out by RTP timestamp: a gap is silence, as lost audio would be
            deg = _playout(_since(rec.app_raw, rec.t0), rec.app_codec or g711.PCMU)
            return _pesq(self.far_program.speech8k, deg)
        arrival = self._app_arrivals(rec)
        frames = [s for pts, s in rec.app_frames if arrival.get(pts % (1 << 32), rec.t0) >= rec.t0 - 0.2]
        deg = np.concatenate(frames or [np.zeros(0, np.int16)])
        if rec.app_rate != SIP_RATE:
            deg = _resample(deg, rec.app_rate, SIP_RATE)
        return _pesq(self.far_program.speech8k, deg)
