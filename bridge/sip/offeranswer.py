"""A call's SDP offer/answer (RFC 3264): our SDP, the peer's applied to the RTP endpoint, and the
media policy for every SDP (a part of `SipCall`).

Direction: what we want (sendrecv, or sendonly while we hold) meets what the peer's SDP allows
(its direction mirrored; an RFC 2543 hold, c=0.0.0.0, allows nothing); the stream sends only if
both allow it and receives only if both do.

SRTP (`sip.srtp`, SDES): a call has one key of its own per suite, made when first needed and
kept for the whole call. Our first offer carries one `a=crypto` line per suite, an answer the
offer's line with our key, a re-offer the line of the suite in use (or none, if the peer took
plain RTP); each SDP from the peer sets the keys of the RTP endpoint again (unchanged keys keep
their SRTP state).
"""

from __future__ import annotations

import logging

from ..srtp import SUITES, SrtpKey, new_key
from . import sdes, sdp

log = logging.getLogger("bridge.sip")

_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_SENDS = ("sendrecv", "sendonly")
_RECEIVES = ("sendrecv", "recvonly")


def both_allow(ours: str, theirs: str) -> str:
    """The direction of a stream that `ours` and `theirs` (each from this side's view) both allow."""
    send = ours in _SENDS and theirs in _SENDS
    receive = ours in _RECEIVES and theirs in _RECEIVES
    if send:
        return "sendrecv" if receive else "sendonly"
    return "recvonly" if receive else "inactive"


class OfferAnswer:
    """Our SDP and the peer's, for one call (a part of `SipCall`)."""

    def _local_sdp(self, codecs: list[tuple[str, int]], telephone_event: int | None,
                   direction: str = "sendrecv", answer_to: sdp.Audio | None = None) -> str:
        """Our SDP: an answer to `answer_to`, else an offer (a re-offer once a session exists)."""
        _, port = self.media.local_address
        return sdp.build(self.ua.cfg.contact_host, port, codecs, session=self._session,
                         telephone_event=telephone_event, direction=direction, like=self._remote_sdp,
                         crypto=self._crypto_lines(answer_to),
                         protocol="RTP/SAVP" if self.ua.cfg.srtp == "required" else "RTP/AVP")

    def _key(self, suite: str) -> bytes:
        if suite not in self._keys:
            self._keys[suite] = new_key()
        return self._keys[suite]

    def _crypto_lines(self, answer_to: sdp.Audio | None) -> list[sdes.Crypto]:
        if self.ua.cfg.srtp == "off":
            return []
        if answer_to is None and self._remote_sdp is None:
            return sdes.offer({suite: self._key(suite) for suite in SUITES})
        taken = (answer_to or self._remote_sdp).crypto  # type: ignore[union-attr]
        return [sdes.Crypto(taken.tag, taken.suite, self._key(taken.suite))] if taken is not None else []

    def usable_sdp(self, body: bytes, codecs: tuple[str, ...] | None = None) -> tuple[sdp.Audio, tuple[str, int]]:
        """The peer's audio stream and codec (of ours, or `codecs`); SdpError if unusable, or if
        RTP may not go where it says (the media policy)."""
        return self.ua.usable_sdp(body, codecs or self.ua.cfg.codecs, self.signalling_peer)

    def _apply_remote_sdp(self, audio: sdp.Audio, codec: tuple[str, int] | None = None) -> None:
        if codec is not None:
            self.codec = codec[0]
            self.media.set_codec(codec[0], codec[1], audio.telephone_event)
            if self._offered_dtmf_pt is not None and audio.telephone_event is not None:
                self.media.accept_dtmf_payload_type(self._offered_dtmf_pt)
        if audio.crypto is not None:
            self.media.set_srtp(SrtpKey(audio.crypto.suite, self._key(audio.crypto.suite)), audio.crypto.srtp_key)
        else:
            self.media.set_srtp(None, None)
        if not audio.held_by_address and audio.port:
            self.media.set_remote((audio.address, audio.port))
        self.media.set_direction(self._answer_direction(audio))
        hold = audio.on_hold
        if hold != self.on_hold_now:
            self.on_hold_now = hold
            log.info("call %s: %s by the remote party", self.call_id, "held" if hold else "resumed")
            if self.on_hold is not None:
                self.on_hold(hold)
        self._remote_sdp = audio

    def _answer_direction(self, offer: sdp.Audio) -> str:
        """Our direction against the peer's SDP: what we want, as far as it allows."""
        theirs = "inactive" if offer.held_by_address else _MIRROR.get(offer.direction, "sendrecv")
        return both_allow("sendonly" if self.held_locally else "sendrecv", theirs)
