"""``scoring/``: each frame scored as it is written (edge and Gram losses, warp error, colour drift, LPIPS, CLIP
consistency) and the drift measures over a clip; ``report/`` shows them (docs/architecture.md)."""
