"""qvedit/core: see docs/architecture.md."""
