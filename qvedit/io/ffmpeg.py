"""The ffmpeg binary's jobs for video files (the one the ``imageio-ffmpeg`` wheel ships): how many frames a file
holds and when each is shown, and frames encoded into an mp4 with the source's sound.

Frames are read as the file shows them: ffmpeg applies a phone video's rotation (its display matrix), so a
portrait clip stored landscape is read, and written, portrait.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import imageio_ffmpeg
import numpy as np

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_path
from qvedit.core.images import read_rgb8

# One decoded frame per video frame: variable-rate videos are neither padded nor thinned to a constant rate.
AS_STORED = ("-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough")
MP4_AUDIO = ("aac", "mp3", "alac", "ac3", "eac3", "opus", "flac")  # codecs an mp4 holds as they are (copied)
IRREGULAR = 0.25  # a frame interval this far (a share) from the median makes the timing variable
_NTSC_RATES = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120)]


def at_constant_rate(fps: float) -> tuple[str, ...]:
    """The decoding options that read a variable-rate video at ``fps`` frames a second: each frame shown at
    ``k / fps`` is the source's frame on screen then (repeated or dropped as its timestamps say)."""
    return ("-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "cfr", "-r", str(frame_rate(fps)))


def ffmpeg_reason(text: str) -> str:
    """The first error line of an ffmpeg log, without ``[h264 @ 0x...]`` prefixes, for a one-line message."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in text.splitlines()]
    # imageio-ffmpeg's own headers ("Could not read frame 3:", "=== stderr ===") say nothing new.
    lines = [line for line in lines if line and not re.match(r"===|Could not (read frame|load meta)", line)]
    errors = [line for line in lines
              if re.search(r"error|invalid|not found|no such|partial file|end of file", line, re.I)]
    return (errors or lines or ["unknown error"])[0].rstrip(".")


@dataclass(frozen=True)
class FrameTimes:
    """The frames of a video's first video stream as decoded: how many, and when each is shown (seconds)."""

    times: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def irregular(self) -> bool:
        """Whether the frames are shown at a variable rate: an interval between two frames far from the usual one
        (a phone video's dropped rate in low light, clips of two rates joined)."""
        intervals = np.diff(self.times)
        if intervals.size < 2:
            return False
        usual = float(np.median(intervals))
        return usual <= 0 or float(np.abs(intervals - usual).max()) > IRREGULAR * usual


def frame_times(path: Path, limit: Optional[int] = None, select: tuple[str, ...] = AS_STORED) -> FrameTimes:
    """Decode the first video stream of ``path`` (or its first ``limit`` frames) as ``select`` says, and list when
    each frame is shown. Every frame is decoded, none is kept. A file ffmpeg cannot open, a file without video,
    with no frames, or with decode errors (a truncated or damaged file) is a QveditError."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-v", "error", "-i", str(path),
           *select]
    if select == AS_STORED:  # the file's own timestamps, not rounded to a guessed rate's ticks
        cmd += ["-enc_time_base", "demux"]
    if limit is not None:
        cmd += ["-frames:v", str(limit)]
    cmd += ["-f", "framecrc", "-"]  # a line per frame: stream, dts, pts, duration, size, checksum
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    base = re.search(r"^#tb 0: (\d+)/(\d+)", done.stdout, flags=re.MULTILINE)
    scale = Fraction(int(base[1]), int(base[2])) if base else Fraction(1)
    times = tuple(float(int(pts) * scale) for pts in re.findall(r"^0,\s*-?\d+,\s*(-?\d+),", done.stdout,
                                                                 flags=re.MULTILINE))
    if done.returncode != 0:
        if "matches no streams" in done.stderr:
            raise QveditError(f"{path} has no video frames (no decodable video stream: empty, damaged or not a "
                              "video): export the clip again or use another file")
        raise QveditError(f"cannot decode video {path} (ffmpeg: {ffmpeg_reason(done.stderr)}): the file is "
                          "incomplete or not a video; export the clip again or use another file")
    if done.stderr.strip():
        raise QveditError(
            f"video {path} is truncated or damaged (ffmpeg: {ffmpeg_reason(done.stderr)}, after {len(times)} decoded "
            f"frames): re-encode what decodes (ffmpeg -i {path} -c:v libx264 -pix_fmt yuv420p fixed.mp4) "
            "or use another file"
        )
    if not times:
        raise QveditError(f"{path} has no video frames: use a video with at least one frame")
    return FrameTimes(times)


def decodable_frames(path: Path, limit: Optional[int] = None, select: tuple[str, ...] = AS_STORED) -> int:
    """How many frames ``frame_times`` decodes from ``path``."""
    return frame_times(path, limit, select).count


def frame_rate(fps: float) -> Fraction:
    """``fps`` as a fraction; 23.98, 29.97, 59.94 ... (as ffmpeg prints them) snap to n*1000/1001."""
    for rate in _NTSC_RATES:
        if abs(fps - float(rate)) < 0.006:
            return rate
    return Fraction(fps).limit_denominator(1001)


@dataclass(frozen=True)
class Sound:
    """The sound an mp4 gets: the first audio stream of ``source`` (coded with ``codec``)."""

    source: Path
    codec: str

    def options(self, seconds: float, copy: bool) -> list[str]:
        """ffmpeg's options that add it as the second input, cut to ``seconds``: copied as it is (``copy``, for
        the codecs an mp4 holds) or made AAC."""
        coding = ["-c:a", "copy"] if copy else ["-c:a", "aac", "-b:a", "192k"]
        return ["-i", str(self.source), "-map", "0:v:0", "-map", "1:a:0?", *coding, "-t", f"{seconds:.6f}"]


def encode_video(frame_paths: list[Path], out_path: Path, fps: float, sound: Optional[Sound] = None) -> Path:
    """Write the PNG frames as an H.264 mp4 (libx264, CRF 18, yuv420p, faststart), one frame in memory.

    yuv420p needs an even width and height: a frame of odd size gets its last column/row repeated,
    so a 35x21 clip is stored as 36x22. ``sound``: the source's audio, cut to the frames' duration
    (``len(frame_paths) / fps``) and copied without re-encoding where an mp4 holds its codec (else made
    AAC; also where copying fails). The file is written under a temporary name and renamed when ffmpeg
    has finished without error. Returns ``out_path``.
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
    seconds = len(frame_paths) / float(frame_rate(fps))
    if sound is None:
        attempts = [["-an"]]
    elif sound.codec in MP4_AUDIO:  # copied; made AAC if the copy fails (a stream an mp4 muxer will not take)
        attempts = [sound.options(seconds, copy=True), sound.options(seconds, copy=False)]
    else:
        attempts = [sound.options(seconds, copy=False)]
    with atomic_path(out_path) as partial:
        for number, audio in enumerate(attempts):
            stderr = _encode(frame_paths, partial, fps, audio)
            if stderr is None:
                break
            if number == len(attempts) - 1:
                raise QveditError(f"cannot write video {out_path} (ffmpeg: {ffmpeg_reason(stderr)}): "
                                  "check the disk space and that the folder is writable")
    return out_path


def _encode(frame_paths: list[Path], partial: Path, fps: float, audio: list[str]) -> Optional[str]:
    """One ffmpeg run that writes ``partial`` from the frames (and ``audio``'s options); its log if it failed."""
    width, height = read_rgb8(Path(frame_paths[0])).size
    padded = (width + width % 2, height + height % 2)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{padded[0]}x{padded[1]}", "-r", str(frame_rate(fps)),
           "-i", "-", *audio, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
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
                    pixels = np.pad(pixels, ((0, padded[1] - height), (0, padded[0] - width), (0, 0)), mode="edge")
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
        return None if process.returncode == 0 else log.read().decode(errors="replace")
