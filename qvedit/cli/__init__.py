"""qvedit/cli: see docs/architecture.md."""
