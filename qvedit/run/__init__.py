"""``run/``: one run, from the typed settings to the published clip: the job (``job.run``), the clip editor's rolling
loop, the pipeline call that makes one image, frame 0's edit, each frame's outputs, the frame plan and the segment
schedule (docs/architecture.md)."""
