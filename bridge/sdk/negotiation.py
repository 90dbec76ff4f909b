"""The ICE configuration of a call, and what its SDP negotiated (codec, payload types)."""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCRtpSender
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from .. import codecs
from ..reasons import StartFailReason
from .params import _fail


CODEC_NAMES = ("opus", "G722", "PCMU", "PCMA")
ICE_TRANSPORT_POLICIES = {"all": RTCIceTransportPolicy.ALL, "relay": RTCIceTransportPolicy.RELAY}


def ice_configuration(servers: Any, policy: str = "all") -> RTCConfiguration:
    """aiortc's configuration from the platform's RTCIceServer dicts (malformed entries skipped).
    aiortc uses the first STUN and the first TURN URL it can (turn: over udp or tcp, turns: over
    tcp); a browser tries them all."""
    ice = []
    for entry in servers if isinstance(servers, list) else []:
        urls = entry.get("urls") if isinstance(entry, dict) else None
        urls = [urls] if isinstance(urls, str) else urls
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            continue
        urls = [u for u in urls if _aiortc_takes(u)]     # e.g. not an IPv6 literal: aiortc refuses it
        if not urls:
            continue
        username, credential = entry.get("username"), entry.get("credential")
        ice.append(RTCIceServer(urls=urls, username=username if isinstance(username, str) else None,
                                credential=credential if isinstance(credential, str) else None))
    return RTCConfiguration(iceServers=ice, iceTransportPolicy=ICE_TRANSPORT_POLICIES[policy])


def _aiortc_takes(url: str) -> bool:
    try:
        parse_stun_turn_uri(url)
    except ValueError:
        return False
    return True


def _preferences(codecs: tuple[str, ...] | None) -> list:
    """aiortc codec capabilities in the order `codecs` names them."""
    if not codecs:
        return []
    available = RTCRtpSender.getCapabilities("audio").codecs
    wanted = []
    for name in codecs:
        if name not in CODEC_NAMES:
            _fail(StartFailReason.INVALID_PARAM, f"codec {name!r}: use {', '.join(CODEC_NAMES)}")
        wanted += [c for c in available if c.mimeType.split("/")[1].lower() == name.lower()]
    return wanted


def negotiated_codec(sdp: str) -> str:
    """The first codec of the audio m= line of an SDP answer ("PCMU", "opus", ...)."""
    types = negotiated_payload_types(sdp)
    return next(iter(types.values()), "")


def negotiated_payload_types(sdp: str) -> dict[int, str]:
    """The codecs of the audio m= line of an SDP answer by payload type, in its order (static
    types without an rtpmap line by their RFC 3551 names)."""
    order: list[int] = []
    names: dict[int, str] = {}
    for line in sdp.splitlines():
        if line.startswith("m="):
            if order:
                break
            fields = line.split()
            if fields[0] == "m=audio" and len(fields) > 3:
                order = [int(pt) for pt in fields[3:] if pt.isdigit()]
        elif order and line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            name = rest.split("/")[0].strip()
            if pt.isdigit() and name:
                names[int(pt)] = name
    static = codecs.BY_PAYLOAD_TYPE
    return {pt: names.get(pt) or static[pt].name for pt in order if pt in names or pt in static}
