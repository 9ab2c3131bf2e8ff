"""Video-file mode (docs/METHOD.md, section 1): frame 0 and edge frames decoded from video files, and mp4 output.

Decoding and encoding go through the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships. Frames
are decoded as 8-bit RGB (``rgb24``), one decoded frame per video frame (``-fps_mode passthrough``:
variable-rate videos are neither padded nor thinned to a constant rate).
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional

import imageio_ffmpeg
import numpy as np
from PIL import Image

from qvedit.errors import QveditError
from qvedit.files import atomic_path
from qvedit.images import read_rgb8, to_rgb8
from qvedit.io.frames import EdgeMaker, resized
from qvedit.io.layout import RunLayout
from qvedit.settings.io import VideoIO

log = logging.getLogger(__name__)

_SELECT = ["-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough"]
_NTSC_RATES = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120)]


def _ffmpeg_reason(text: str) -> str:
    """The first error line of an ffmpeg log, without ``[h264 @ 0x...]`` prefixes, for a one-line message."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in text.splitlines()]
    # imageio-ffmpeg's own headers ("Could not read frame 3:", "=== stderr ===") say nothing new.
    lines = [line for line in lines if line and not re.match(r"===|Could not (read frame|load meta)", line)]
    errors = [line for line in lines
              if re.search(r"error|invalid|not found|no such|partial file|end of file", line, re.I)]
    return (errors or lines or ["unknown error"])[0].rstrip(".")


def decodable_frames(path: Path, limit: int | None = None) -> int:
    """Decode the first video stream of ``path`` (or its first ``limit`` frames) and count the frames.

    The count is exact: every frame is decoded, none is kept. A file ffmpeg cannot open, a file
    without video, with no frames, or with decode errors (a truncated or damaged file) is a QveditError.
    """
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "error",
           "-i", str(path), *_SELECT]
    if limit is not None:
        cmd += ["-frames:v", str(limit)]
    cmd += ["-f", "null", "-progress", "pipe:1", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    counts = re.findall(r"^frame=(\d+)$", done.stdout, flags=re.MULTILINE)
    frames = int(counts[-1]) if counts else 0
    if done.returncode != 0:
        if "matches no streams" in done.stderr:
            raise QveditError(f"{path} has no video frames (no decodable video stream: empty, damaged or not a "
                              "video): export the clip again or use another file")
        raise QveditError(f"cannot decode video {path} (ffmpeg: {_ffmpeg_reason(done.stderr)}): the file is "
                          "incomplete or not a video; export the clip again or use another file")
    if done.stderr.strip():
        raise QveditError(
            f"video {path} is truncated or damaged (ffmpeg: {_ffmpeg_reason(done.stderr)}, after {frames} decoded "
            f"frames): re-encode what decodes (ffmpeg -i {path} -c:v libx264 -pix_fmt yuv420p fixed.mp4) "
            "or use another file"
        )
    if frames == 0:
        raise QveditError(f"{path} has no video frames: use a video with at least one frame")
    return frames


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

    def __init__(self, path: Path):
        self.path = path
        self._frames = None  # the read_frames generator, positioned before frame self._next
        self._next = 0
        self._size = (0, 0)
        self._last: Optional[tuple[int, np.ndarray]] = None  # (index, frame) of the frame decoded last

    def open(self) -> dict:
        """Start decoding from frame 0; returns ffmpeg's metadata (``size`` = (W, H), ``fps``)."""
        self.close()
        self._frames = imageio_ffmpeg.read_frames(str(self.path), output_params=list(_SELECT))
        try:
            meta = next(self._frames)
        except (OSError, RuntimeError, StopIteration) as err:
            self.close()
            raise QveditError(f"cannot open video {self.path} (ffmpeg: {_ffmpeg_reason(str(err))}): "
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
                    f"cannot read frame {failed_at} of video {self.path} (ffmpeg: {_ffmpeg_reason(str(err))}): "
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

        if self.edge_path is None:
            rgb_frames = decodable_frames(self.rgb_path)
            if rgb_frames < 2:
                raise QveditError(
                    f"io.rgb_video {self.rgb_path} has only 1 frame and io.edge_video is not set, so there are "
                    "no later frames to make edges from: use a longer clip or pass io.edge_video=edges.mp4"
                )
            self._count = rgb_frames - 1
            self._rgb_count = rgb_frames
        else:
            self._rgb_count = decodable_frames(self.rgb_path)
            self._count = decodable_frames(self.edge_path)
            if 1 < self._rgb_count < self._count + 1:
                log.warning("io.rgb_video has %d frames but the clip has %d: its frames are not used as source "
                            "frames, and optical flow is estimated between edge maps", self._rgb_count,
                            self._count + 1)

        first = _FrameStream(self.rgb_path)
        meta = first.open()
        try:
            self._init = to_rgb8(Image.fromarray(first.frame(0)))
        finally:
            first.close()
        self.fps = float(meta.get("fps") or 0.0)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise QveditError(
                f"cannot tell the frame rate of {self.rgb_path}: re-encode it at a constant rate "
                f"(ffmpeg -i {self.rgb_path} -r 24 -c:v libx264 -pix_fmt yuv420p fixed.mp4)"
            )
        # Edge k is frame k of the edge video, or frame k+1 of the RGB video.
        self._edges = _FrameStream(self.edge_path or self.rgb_path)
        self._offset = 0 if self.edge_path else 1
        self._sources = _FrameStream(self.rgb_path)  # its own decoder: edges and sources are read side by side

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
        """Encode the frames as ``layout.video`` (``io.out_video``) at the RGB video's fps.

        Frame 0 of the mp4 is frame 0 of the input as decoded; mp4 is lossy, so only the PNG frames
        are pixel-exact. With ``io.keep_frames=false`` the PNGs are deleted once the mp4 is written.
        """
        encode_video(frame_paths, layout.video, self.fps)
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


def _frame_rate(fps: float) -> Fraction:
    """``fps`` as a fraction; 23.98, 29.97, 59.94 ... (as ffmpeg prints them) snap to n*1000/1001."""
    for rate in _NTSC_RATES:
        if abs(fps - float(rate)) < 0.006:
            return rate
    return Fraction(fps).limit_denominator(1001)


def encode_video(frame_paths: list[Path], out_path: Path, fps: float) -> Path:
    """Write the PNG frames as an H.264 mp4 (libx264, CRF 18, yuv420p, faststart), one frame in memory.

    yuv420p needs an even width and height: a frame of odd size gets its last column/row repeated,
    so a 35x21 clip is stored as 36x22. The file is written under a temporary name and renamed when
    ffmpeg has finished without error. Returns ``out_path``.
    """
    out_path = Path(out_path)
    if not frame_paths:
        raise QveditError(f"no frames to encode into {out_path}: generate at least one frame first")
    if not (np.isfinite(fps) and fps > 0):
        raise QveditError(f"cannot encode {out_path} at {fps} frames per second: give a rate > 0")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise QveditError(f"cannot create folder {out_path.parent} for {out_path.name}: {err.strerror}") from None
    width, height = read_rgb8(Path(frame_paths[0])).size
    padded = (width + width % 2, height + height % 2)
    with atomic_path(out_path) as partial:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{padded[0]}x{padded[1]}", "-r", str(_frame_rate(fps)),
               "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
               "-movflags", "+faststart", str(partial)]
        # stderr goes to a file: a pipe nobody reads while we write frames could fill up and block ffmpeg.
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
            try:
                for path in frame_paths:
                    image = read_rgb8(Path(path))
                    if image.size != (width, height):
                        raise QveditError(
                            f"frame {path} is {image.size[0]}x{image.size[1]}, the first frame {width}x{height}: "
                            "all frames of a video must have one size"
                        )
                    pixels = np.asarray(image)
                    if padded != (width, height):
                        pixels = np.pad(pixels, ((0, padded[1] - height), (0, padded[0] - width), (0, 0)),
                                        mode="edge")
                    process.stdin.write(np.ascontiguousarray(pixels).tobytes())
            except BrokenPipeError:
                pass  # ffmpeg quit early; its log below says why
            except BaseException:
                process.kill()
                raise
            finally:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
                process.wait()
            log.seek(0)
            stderr = log.read().decode(errors="replace")
        if process.returncode != 0:
            raise QveditError(f"cannot write video {out_path} (ffmpeg: {_ffmpeg_reason(stderr)}): "
                              "check the disk space and that the folder is writable")
    return out_path
