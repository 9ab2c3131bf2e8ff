"""``schedule=segments``: keyframes first, then the segments between them, in this process or on Ray workers.

A chain (``schedule=chain``, ``qvedit.run.clip_editor.edit_clip``) makes frame k+1 from frame k, so frame N is N edits
from frame 0 and one GPU makes the clip however many there are. The segment schedule makes keyframes K, 2K, ... from
frame 0 (or from the keyframe before), then every segment jK+1 .. (j+1)K-1 as a short chain from its keyframe;
segments do not depend on each other, so ``schedule.workers`` workers make them side by side.

- ``plan.py``: which frames are keyframes, what each frame is made from, its hops, what it depends on (arithmetic);
- ``worker.py``: a worker's side: makes a frame from the frames folder, stages it and scores it;
- ``outputs.py``: the driver's side of the frames folder: what a resumed run keeps, each frame's commit with its
  metrics row, ``metrics.csv`` in frame order at the end;
- ``driver.py``: hands frames to workers as they free up and commits what comes back, one progress line;
- ``pool.py``: the workers: one in this process, or N Ray actors that survive a lost worker (``ray_pool.py``).
"""
