"""bridge: a telephony bridge between 1-to-1 WebRTC app calls and SIP desk phones."""

__version__ = "0.1.0"
