"""iceward: a STUN/TURN server and WebRTC connectivity diagnostics."""

__version__ = "0.1.0"
SOFTWARE = f"iceward/{__version__}"
