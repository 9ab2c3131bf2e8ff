"""qvedit/run: see docs/architecture.md."""
