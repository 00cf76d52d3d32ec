"""Production visibility: the browser SDK, the call records it posts, the dashboard."""
