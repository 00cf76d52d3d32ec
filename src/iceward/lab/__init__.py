"""``iceward lab``: real kernel NAT in network namespaces."""
