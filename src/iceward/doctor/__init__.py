"""``iceward doctor``: active probes of an iceServers configuration."""
