"""``iceward analyze``: root cause from webrtc-internals dumps, rtcstats dumps and getStats JSON."""
