"""``core/``: the leaves every other folder may use and which use nothing of qvedit: one-line errors, atomic files
and the cache folder, image conversions, CIELAB colour statistics, folder locks, clean stops, config trust, torchrun
ranks, CPU threads, the background writer and the tools' argument parser (docs/architecture.md)."""
