"""asyncio I/O adapters around the sans-IO core: UDP, TCP/TLS streams, relay sockets."""
