"""Video-file mode (docs/METHOD.md, section 1): frame 0 and edge frames decoded from video files, and mp4 output.

Decoding and encoding go through the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships
(``qvedit.io.ffmpeg``). Frames are decoded as 8-bit RGB (``rgb24``), one decoded frame per video frame; a
video whose frames are shown at a variable rate is read at its average rate instead, each frame the one on
screen then, so the output keeps the input's timing and sound.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import imageio_ffmpeg
import numpy as np
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import to_rgb8
from qvedit.io.ffmpeg import (AS_STORED, Sound, at_constant_rate, decodable_frames, encode_video, ffmpeg_reason,
                              frame_rate, frame_times)
from qvedit.io.frames import EdgeMaker, resized
from qvedit.io.layout import RunLayout
from qvedit.settings.io import VideoIO

log = logging.getLogger(__name__)
# imageio-ffmpeg warns of every rotated (phone) video that its frames are read in another size: qvedit says why
logging.getLogger("imageio_ffmpeg").addFilter(lambda record: "is different from the source frame size"
                                              not in record.getMessage())
__all__ = ["VideoClip", "decodable_frames", "encode_video"]


def _check_file(path: str, what: str, key: str) -> Path:
    video = Path(path)
    if not video.exists():
        raise QveditError(f"{what} not found: {video} (set {key}=PATH)")
    if not video.is_file():
        raise QveditError(f"{key} is not a file: {video}")
    return video


class _FrameStream:
    """Frames of one video, decoded in order by a single ffmpeg process: ``frame(i)`` for rising i.

    Asking for an earlier frame than the last one restarts decoding from the start; asking for the last one
    again gives it back without decoding (the flow and the colour target both read source frame i).
    """

    def __init__(self, path: Path, select: tuple[str, ...] = AS_STORED):
        self.path, self.select = path, select
        self._frames = None  # the read_frames generator, positioned before frame self._next
        self._next = 0
        self._size = (0, 0)
        self._last: Optional[tuple[int, np.ndarray]] = None  # (index, frame) of the frame decoded last

    def open(self) -> dict:
        """Start decoding from frame 0; returns ffmpeg's metadata (``size`` = (W, H), ``fps``)."""
        self.close()
        self._frames = imageio_ffmpeg.read_frames(str(self.path), output_params=list(self.select))
        try:
            meta = next(self._frames)
        except (OSError, RuntimeError, StopIteration) as err:
            self.close()
            raise QveditError(f"cannot open video {self.path} (ffmpeg: {ffmpeg_reason(str(err))}): "
                              "check that the file is a complete video") from None
        self._size = tuple(meta["size"])
        self._next = 0
        return meta

    def frame(self, index: int) -> np.ndarray:
        """Video frame ``index`` as an (H, W, 3) uint8 array; the frames before it are skipped."""
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._frames is None or index < self._next:
            self.open()
        while True:
            try:
                data = next(self._frames)
            except StopIteration:
                ended_after = self._next
                self.close()
                raise QveditError(
                    f"video {self.path} ended after {ended_after} frames while frame {index} was needed: "
                    "the file changed or is damaged; re-encode or replace it"
                ) from None
            except (OSError, RuntimeError) as err:
                failed_at = self._next
                self.close()
                raise QveditError(
                    f"cannot read frame {failed_at} of video {self.path} (ffmpeg: {ffmpeg_reason(str(err))}): "
                    "the file changed or is damaged; re-encode or replace it"
                ) from None
            self._next += 1
            if self._next - 1 == index:
                width, height = self._size
                self._last = (index, np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3))
                return self._last[1]

    def close(self) -> None:
        """Stop the ffmpeg process, if one is running."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None


class VideoClip:
    """Video-file mode (docs/METHOD.md, section 1): frame 0 from ``rgb_video``, edge frames from ``edge_video``.

    ``rgb_video``: only its first frame is used when ``edge_video`` is given. ``edge_video``: T-1 frames,
    its frame 0 is the edge of output frame 1. Without ``edge_video`` the edges are made from frames
    1.. of ``rgb_video`` with ``edge_map(frame, edge_op)`` (Sobel or Laplacian, 0..255 grey) and, if
    ``edges_dir`` is given, also saved there as ``00001.png ...`` (edge of output frame i named i;
    unused with ``edge_video``).
    ``fps`` is the RGB video's frame rate; ``size`` its (W, H). Opening decodes every frame that will
    be used once to count them exactly (none is kept), so a damaged file fails before any generation.

    A ``FrameSource`` like ``FrameFolders``. Edge frames are decoded as a stream, one frame in memory
    at a time: ``edge_frame(k)`` for increasing k (it may start at k > 0) costs one decode per frame;
    going back restarts decoding. The decoding process ends after the last edge frame or on ``close()``.
    """

    def __init__(self, settings: VideoIO, edges_dir: Optional[Path] = None):
        if not settings.rgb_video:
            raise QveditError(
                "io.rgb_video is not set: pass io.rgb_video=clip.mp4 (edges are made from its frames 1.., "
                "or pass io.edge_video=edges.mp4 too)"
            )
        self.settings = settings
        self.rgb_path = _check_file(settings.rgb_video, "RGB video", "io.rgb_video")
        self.edge_path = _check_file(settings.edge_video, "edge video", "io.edge_video") if settings.edge_video \
            else None
        self.edges = EdgeMaker(settings.edge_op, edges_dir) if self.edge_path is None else None

        rgb_times = frame_times(self.rgb_path)  # every frame decoded once: a damaged file fails here
        first = _FrameStream(self.rgb_path)
        meta = first.open()
        first.close()
        self.fps = float(meta.get("fps") or 0.0)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise QveditError(
                f"cannot tell the frame rate of {self.rgb_path}: re-encode it at a constant rate "
                f"(ffmpeg -i {self.rgb_path} -r 24 -c:v libx264 -pix_fmt yuv420p fixed.mp4)"
            )
        self.audio_codec: Optional[str] = meta.get("audio_codec")  # None: the video has no sound
        self.select, self._rgb_count = AS_STORED, rgb_times.count
        if rgb_times.irregular:  # read at the average rate: frame k is the frame on screen at k / fps
            self.select = at_constant_rate(self.fps)
            self._rgb_count = decodable_frames(self.rgb_path, select=self.select)
            intervals = np.diff(rgb_times.times) * 1000
            log.warning("io.rgb_video %s shows its frames at a variable rate (%.0f to %.0f ms apart): it is read at "
                        "its average %.4g frames a second, a frame repeated or left out where its timestamps say, so "
                        "the output keeps its timing and sound (%d frames instead of %d)", self.rgb_path,
                        intervals.min(), intervals.max(), float(frame_rate(self.fps)), self._rgb_count,
                        rgb_times.count)
        if self.edge_path is None:
            if self._rgb_count < 2:
                raise QveditError(
                    f"io.rgb_video {self.rgb_path} has only 1 frame and io.edge_video is not set, so there are "
                    "no later frames to make edges from: use a longer clip or pass io.edge_video=edges.mp4"
                )
            self._count = self._rgb_count - 1
        else:
            self._count = decodable_frames(self.edge_path)
            if 1 < self._rgb_count < self._count + 1:
                log.warning("io.rgb_video has %d frames but the clip has %d: its frames are not used as source "
                            "frames, and optical flow is estimated between edge maps", self._rgb_count,
                            self._count + 1)

        first = _FrameStream(self.rgb_path, self.select)
        first.open()
        try:
            self._init = to_rgb8(Image.fromarray(first.frame(0)))
        finally:
            first.close()
        # Edge k is frame k of the edge video, or frame k+1 of the RGB video.
        self._edges = _FrameStream(self.edge_path) if self.edge_path else _FrameStream(self.rgb_path, self.select)
        self._offset = 0 if self.edge_path else 1
        self._sources = _FrameStream(self.rgb_path, self.select)  # its own decoder: edges and sources side by side
        self.video_notes: list[str] = []  # what finish() says of the mp4 it wrote (the run's summary shows it)

    @property
    def has_source_frames(self) -> bool:
        """The RGB video's frames are the source frames when it has one for every output frame."""
        return self._rgb_count >= self._count + 1

    def source_frame(self, i: int, size: tuple[int, int]) -> Image.Image:
        frame = to_rgb8(Image.fromarray(self._sources.frame(i)))
        if i == self._count:
            self._sources.close()
        return resized(frame, size, "area")

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the RGB video, i.e. of frame 0 and of every output frame."""
        return self._init.size

    def init_image(self) -> Image.Image:
        """Frame 0: the first frame of the RGB video, as 8-bit RGB."""
        return self._init.copy()

    def edge_frame(self, k: int, size: tuple[int, int]) -> Image.Image:
        """Edge frame k (the edge of output frame k+1) as 8-bit RGB resized to ``size`` = (W, H)."""
        if not 0 <= k < self._count:
            raise IndexError(f"edge frame {k} out of range: the clip has {self._count} edge frames")
        frame = self._edges.frame(k + self._offset)
        if k == self._count - 1:
            self._edges.close()
        edge = to_rgb8(Image.fromarray(frame)) if self.edges is None else self.edges.edge(k + 1, frame)
        return resized(edge, size, self.settings.resize)

    def __len__(self) -> int:
        return self._count

    def finish(self, frame_paths: list[Path], layout: RunLayout) -> list[Path]:
        """Encode the frames as ``layout.video`` (``io.out_video``) at the RGB video's fps, with its sound cut to
        the frames made (``io.audio=keep``); ``video_notes`` say what the mp4 holds.

        Frame 0 of the mp4 is frame 0 of the input as decoded; mp4 is lossy, so only the PNG frames
        are pixel-exact. With ``io.keep_frames=false`` the PNGs are deleted once the mp4 is written.
        """
        keep = self.settings.audio == "keep" and self.audio_codec is not None
        encode_video(frame_paths, layout.video, self.fps, Sound(self.rgb_path, self.audio_codec) if keep else None)
        width, height = self.size
        self.video_notes = [f"{len(frame_paths)} frames at {float(frame_rate(self.fps)):.4g} fps, "
                            f"{len(frame_paths) / float(frame_rate(self.fps)):.3g} s"]
        if width % 2 or height % 2:
            self.video_notes.append(f"stored {width + width % 2}x{height + height % 2}, the last column/row repeated "
                                    f"(H.264 takes even sizes; the PNG frames are {width}x{height})")
        self.video_notes.append("sound of io.rgb_video, cut to these frames" if keep else
                                "no sound (io.audio=drop)" if self.audio_codec else "no sound (io.rgb_video has none)")
        if not self.settings.keep_frames:
            for path in frame_paths:
                Path(path).unlink(missing_ok=True)
        return [layout.video]

    def close(self) -> None:
        """Stop decoding (the process also stops by itself after the last edge frame)."""
        self._edges.close()
        self._sources.close()

    def __enter__(self) -> "VideoClip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
