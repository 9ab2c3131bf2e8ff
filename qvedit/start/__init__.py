"""``start/``: how each frame's denoising starts (settings: ``qvedit.settings.start``; docs/long-clips.md, "Frames tied
together where they are made").

``noise.FrameNoise`` makes the noise of each frame (its own, one for the run, or the previous frame's carried along
the optical flow by ``qvedit.guidance.noise_warp``); ``starts.FrameStarts`` turns it, and with ``start.strength`` < 1
the previous output warped onto the frame, into the ``latents=`` and ``sigmas=`` of the frame's pipeline call.
"""
