"""What an app passes to a call and gets back: the seed's parameters, delegate and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiortc.mediastreams import MediaStreamTrack

from .. import protocol
from ..audio import Sink
from ..reasons import Disconnected, StartFailReason


class StartFailError(Exception):
    """makeCall/verifyCall rejected locally: `reason` is a START_FAIL_REASON."""

    def __init__(self, reason: StartFailReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class CallDelegate:
    """Override what you need; methods may be plain or async."""

    def evt_wait_connected(self) -> Any: ...
    def evt_verified(self, param: "CallVerifiedParam") -> Any: ...
    def evt_connected(self) -> Any: ...
    def evt_disconnected(self, param: Disconnected) -> Any: ...
    def evt_peer_mic_muted(self) -> Any: ...
    def evt_peer_mic_unmuted(self) -> Any: ...
    def evt_dtmf(self, digits: str) -> Any: ...
    def evt_peer_hold(self) -> Any: ...
    def evt_peer_unhold(self) -> Any: ...


AudioSource = MediaStreamTrack | str | None


@dataclass
class MakeCallParams:
    my_id: str
    my_service_id: str
    peer_id: str
    peer_service_id: str
    access_token: str
    media_type: str = "audio"
    app_server_data: str | None = None
    delegate: Any = None
    audio: AudioSource = None          # an aiortc audio track, a WAV file path, or None (silence)
    peer_audio: Sink | None = None     # called with each 20 ms frame of the peer: (int16 mono, rate)
    codecs: tuple[str, ...] | None = None   # bridge's extension: e.g. ("PCMU", "PCMA", "opus")


@dataclass
class VerifyCallParams:
    my_id: str
    my_service_id: str
    cc_param: str
    media_type: str = "audio"
    delegate: Any = None
    audio: AudioSource = None
    peer_audio: Sink | None = None
    early_media: bool = False          # send `audio` before accepting (a gateway's ringback)
    codecs: tuple[str, ...] | None = None   # preferred codecs of the answer (bridge's extension)


@dataclass(frozen=True)
class CallVerifiedParam:
    sid: str
    peer_id: str
    peer_service_id: str
    app_server_data: str | None


@dataclass(frozen=True)
class AudioStats:
    """One call's audio at this end (bridge's extension): from aiortc's getStats(), jitter in ms.

    `packets_lost` and `jitter_ms` are what this end measured of the peer's stream;
    `peer_packets_lost` and `peer_jitter_ms` what the peer reported of ours (RTCP receiver
    reports; None until one arrived)."""

    packets_sent: int = 0
    packets_received: int = 0
    packets_lost: int = 0
    jitter_ms: float = 0.0
    peer_packets_lost: int | None = None
    peer_jitter_ms: float | None = None
    round_trip_ms: float | None = None

    @classmethod
    def of(cls, report: Any, clock_rate: int) -> "AudioStats":
        """From an RTCStatsReport (jitter there is in RTP timestamp units of `clock_rate`)."""
        values: dict[str, Any] = {}
        for stats in report.values():
            kind = getattr(stats, "type", "")
            if kind == "outbound-rtp":
                values["packets_sent"] = values.get("packets_sent", 0) + stats.packetsSent
            elif kind == "inbound-rtp":
                values["packets_received"] = values.get("packets_received", 0) + stats.packetsReceived
                values["packets_lost"] = values.get("packets_lost", 0) + max(0, stats.packetsLost)
                values["jitter_ms"] = max(values.get("jitter_ms", 0.0), 1000.0 * stats.jitter / clock_rate)
            elif kind == "remote-inbound-rtp":
                values["peer_packets_lost"] = max(0, stats.packetsLost)
                values["peer_jitter_ms"] = 1000.0 * stats.jitter / clock_rate
                if stats.roundTripTime is not None:
                    values["round_trip_ms"] = 1000.0 * stats.roundTripTime
        return cls(**values)


def _fail(reason: StartFailReason, message: str) -> None:
    raise StartFailError(reason, message)


def _validate_ids(my_id: Any, my_service_id: Any, media_type: Any) -> None:
    if not isinstance(my_id, str) or not protocol.USER_ID.fullmatch(my_id):
        _fail(StartFailReason.INVALID_USER_ID, f"my_id {my_id!r} must match [a-zA-Z0-9_-]{{1,64}}")
    if not isinstance(my_service_id, str) or not protocol.SERVICE_ID.fullmatch(my_service_id):
        _fail(StartFailReason.INVALID_SERVICE_ID,
              f"my_service_id {my_service_id!r} must match [a-zA-Z0-9.-]{{1,64}}")
    if media_type not in protocol.MEDIA_TYPES:
        _fail(StartFailReason.INVALID_MEDIA_TYPE, f"media_type {media_type!r}: only 'audio' is supported")
