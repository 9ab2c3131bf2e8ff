"""``cli/``: the command line: ``python -m qvedit`` (overrides checked before Hydra composes, the Hydra entry point,
one-line errors), the launcher checks and the tools ``bench`` and ``selftest`` (docs/architecture.md)."""
