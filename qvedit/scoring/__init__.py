"""qvedit/scoring: see docs/architecture.md."""
