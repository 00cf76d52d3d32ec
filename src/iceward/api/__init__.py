"""The HTTP API: credentials for app backends, admin, metrics, health."""
