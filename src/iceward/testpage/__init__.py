"""The browser connectivity test: a page end users open, reports support can read."""
