"""Video-file mode: frame 0 and edge frames from video files, streaming, mp4 output, previews, errors."""

import re
import subprocess
from itertools import pairwise
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import read_rgb8
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
import qvedit.io.video as video
from qvedit.io.video import encode_video
from qvedit.settings.io import VideoIO


def VideoClip(rgb_video, edges_dir=None, **io):
    """The io=video source as main opens it, with these io.* values."""
    return video.VideoClip(VideoIO(rgb_video=rgb_video, **io), edges_dir=edges_dir)

FPS = 8.0


def square_frames(count, width=36, height=20, step=3, grey=False):
    """(count, H, W, 3) uint8: a square moving right on a dark gradient."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(0, 80, width, dtype=np.uint8)
    for i in range(count):
        frames[i, 4:12, 2 + step * i:10 + step * i] = (255, 255, 255) if grey else (230, 60, 20)
    return frames


def write_video(path, frames, fps=FPS):
    iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, macro_block_size=1, ffmpeg_log_level="error")
    return path


def decode(path):
    return list(iio.imiter(path, plugin="FFMPEG"))


def to_tensor(frame):
    return torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture
def rgb_video(tmp_path):
    return write_video(tmp_path / "clip.mp4", square_frames(6))


def assert_one_line_error(call, *fragments):
    with pytest.raises(QveditError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_init_frame_count_and_fps(rgb_video):
    clip = VideoClip(str(rgb_video))
    first = decode(rgb_video)[0]
    init = clip.init_image()
    assert init.mode == "RGB" and init.size == (36, 20)
    assert np.array_equal(np.asarray(init), first)
    assert len(clip) == 5 and clip.fps == pytest.approx(FPS)


def test_edges_made_from_rgb_frames_match_sobel_and_are_saved(rgb_video, tmp_path):
    edges_dir = tmp_path / "made_edges"
    clip = VideoClip(str(rgb_video), edges_dir=str(edges_dir))
    decoded = decode(rgb_video)
    for k in range(len(clip)):
        expected = edges_to_uint8(sobel_edges(to_tensor(decoded[k + 1])))
        edge = np.asarray(clip.edge_frame(k, clip.size))
        assert np.array_equal(edge[..., 0], expected) and np.array_equal(edge[..., 2], expected)
        assert np.array_equal(np.asarray(read_rgb8(edges_dir / f"{k + 1:05d}.png"))[..., 1], expected)
    assert sorted(p.name for p in edges_dir.glob("*.png")) == [f"{i:05d}.png" for i in range(1, 6)]


def test_edge_video_of_another_size_is_resized(rgb_video, tmp_path):
    edge_frames = square_frames(4, width=18, height=10, step=1, grey=True)
    edge_video = write_video(tmp_path / "edges.mp4", edge_frames)
    clip = VideoClip(str(rgb_video), edge_video=str(edge_video), resize="nearest")
    assert len(clip) == 4
    decoded = decode(edge_video)
    for k in range(4):
        edge = clip.edge_frame(k, clip.size)
        assert edge.size == (36, 20)
        expected = Image.fromarray(decoded[k]).resize((36, 20), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(edge), np.asarray(expected))


def test_edge_frames_are_streamed_and_may_start_late(rgb_video, monkeypatch):
    pulled = []
    real_read_frames = video.imageio_ffmpeg.read_frames

    def counting_read_frames(*args, **kwargs):
        for item in real_read_frames(*args, **kwargs):
            pulled.append(item)
            yield item

    expected = [edges_to_uint8(sobel_edges(to_tensor(frame))) for frame in decode(rgb_video)[1:]]
    clip = VideoClip(str(rgb_video))
    monkeypatch.setattr(video.imageio_ffmpeg, "read_frames", counting_read_frames)
    assert np.array_equal(np.asarray(clip.edge_frame(2, clip.size))[..., 0], expected[2])
    assert len(pulled) == 1 + 4  # metadata, then video frames 0..3 only: nothing decoded ahead
    assert np.array_equal(np.asarray(clip.edge_frame(3, clip.size))[..., 0], expected[3])
    assert len(pulled) == 1 + 5
    assert np.array_equal(np.asarray(clip.edge_frame(0, clip.size))[..., 0], expected[0])  # restarts
    with pytest.raises(IndexError):
        clip.edge_frame(5, clip.size)
    clip.close()


def test_failure_midway_names_file_and_frame(rgb_video, monkeypatch):
    clip = VideoClip(str(rgb_video))
    real_read_frames = video.imageio_ffmpeg.read_frames

    def failing_read_frames(*args, **kwargs):
        frames = real_read_frames(*args, **kwargs)
        yield next(frames)
        yield next(frames)
        yield next(frames)
        raise RuntimeError("Could not read frame 3:\nEnd of file reached before full frame could be read.")

    monkeypatch.setattr(video.imageio_ffmpeg, "read_frames", failing_read_frames)
    clip.edge_frame(0, clip.size)
    message = assert_one_line_error(lambda: clip.edge_frame(2, clip.size), str(rgb_video), "frame 2")
    assert "End of file" in message


def test_stream_ending_early_is_an_error(rgb_video, monkeypatch):
    clip = VideoClip(str(rgb_video))
    real_read_frames = video.imageio_ffmpeg.read_frames

    def short_read_frames(*args, **kwargs):
        frames = real_read_frames(*args, **kwargs)
        for _ in range(3):
            yield next(frames)
        frames.close()

    monkeypatch.setattr(video.imageio_ffmpeg, "read_frames", short_read_frames)
    assert_one_line_error(lambda: clip.edge_frame(4, clip.size), str(rgb_video), "ended after 2 frames")


@pytest.mark.parametrize("size", [(36, 20), (35, 21)])
def test_encode_video_round_trip(tmp_path, size):
    width, height = size
    frames = square_frames(7, width=width, height=height)
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(frame).save(paths[-1])
    out = encode_video(paths, tmp_path / "out" / "clip.mp4", fps=12.0)
    assert out == tmp_path / "out" / "clip.mp4" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no partial file left
    decoded = decode(out)
    assert len(decoded) == 7
    assert decoded[0].shape == (height + height % 2, width + width % 2, 3)  # odd sizes are padded to even
    assert iio.immeta(out, plugin="FFMPEG")["fps"] == pytest.approx(12.0, abs=0.01)
    error = np.abs(decoded[3][:height, :width].astype(int) - frames[3].astype(int)).mean()
    assert error < 8  # CRF 18: close to the input
    clip = VideoClip(str(out))
    assert len(clip) == 6 and clip.fps == pytest.approx(12.0, abs=0.01)


def test_encode_video_rejects_mixed_sizes(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    Image.new("RGB", (6, 6)).save(tmp_path / "b.png")
    assert_one_line_error(lambda: encode_video([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "o.mp4", 8),
                          "b.png")
    assert not list(tmp_path.glob("*.mp4"))


def test_input_errors_are_one_line(tmp_path, rgb_video):
    assert_one_line_error(lambda: VideoClip(None), "io.rgb_video=clip.mp4")
    assert_one_line_error(lambda: VideoClip(str(tmp_path / "nope.mp4")), "not found", "nope.mp4")
    assert_one_line_error(lambda: VideoClip(str(rgb_video), edge_video=str(tmp_path / "e.mp4")), "e.mp4")
    assert_one_line_error(lambda: VideoClip(str(tmp_path)), "not a file")

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    assert_one_line_error(lambda: VideoClip(str(text)), "cannot decode", "notes.mp4")

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert_one_line_error(lambda: VideoClip(str(empty)), "empty.mp4")

    data = rgb_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(lambda: VideoClip(str(truncated)), "truncated.mp4")

    # io.resize=bicubic and io.edge_op=canny are refused where every value is checked, before any clip opens
    # (tests/test_config.py: the choices of each key)


def test_truncated_video_with_index_up_front_is_damaged(tmp_path):
    # moov first (faststart): ffmpeg opens the cut file and decodes a few frames before the data ends.
    source = write_video(tmp_path / "full.mp4", square_frames(6))
    frames = [tmp_path / f"{i}.png" for i in range(12)]
    for i, path in enumerate(frames):
        Image.fromarray(square_frames(12, width=64, height=48, step=4)[i]).save(path)
    full = encode_video(frames, tmp_path / "fast.mp4", fps=FPS)
    data = full.read_bytes()
    for fraction in (0.5, 0.67, 0.9):
        cut = tmp_path / f"cut{fraction}.mp4"
        cut.write_bytes(data[: int(len(data) * fraction)])
        message = assert_one_line_error(lambda: VideoClip(str(cut)), cut.name)
        assert "truncated or damaged" in message or "incomplete" in message
    assert len(VideoClip(str(source))) == 5


def test_zero_frame_and_single_frame_videos(tmp_path):
    zero = tmp_path / "zero.mp4"
    writer = video.imageio_ffmpeg.write_frames(str(zero), (16, 16), fps=FPS, macro_block_size=1,
                                               ffmpeg_log_level="quiet")
    writer.send(None)
    writer.close()  # no frames: ffmpeg leaves an mp4 without a video stream
    assert zero.stat().st_size > 0
    assert_one_line_error(lambda: VideoClip(str(zero)), "zero.mp4", "no video frames")

    one = write_video(tmp_path / "one.mp4", square_frames(1))
    assert_one_line_error(lambda: VideoClip(str(one)), "only 1 frame", "io.edge_video")
    edges = write_video(tmp_path / "edges.mp4", square_frames(3, grey=True))
    clip = VideoClip(str(one), edge_video=str(edges))
    assert len(clip) == 3 and np.array_equal(np.asarray(clip.init_image()), decode(one)[0])


def test_the_rgb_video_gives_the_source_frames_when_it_has_one_per_output_frame(rgb_video, tmp_path, caplog):
    made = VideoClip(str(rgb_video))  # edges made from frames 1..5: 6 output frames, 6 RGB frames
    assert made.has_source_frames
    decoded = decode(rgb_video)
    for i in range(6):  # read side by side with the edges, as the editor and the flow do
        assert np.array_equal(np.asarray(made.source_frame(i, made.size)), decoded[i])
        if i:
            made.edge_frame(i - 1, made.size)
    edges = write_video(tmp_path / "edges.mp4", square_frames(5, grey=True))
    assert VideoClip(str(rgb_video), edge_video=str(edges)).has_source_frames  # 6 RGB frames for 6 outputs
    first_only = write_video(tmp_path / "first.mp4", square_frames(1))
    assert not VideoClip(str(first_only), edge_video=str(edges)).has_source_frames
    short = write_video(tmp_path / "short.mp4", square_frames(3))
    with caplog.at_level("WARNING"):
        assert not VideoClip(str(short), edge_video=str(edges)).has_source_frames
    assert "io.rgb_video has 3 frames but the clip has 6" in caplog.text


FFMPEG = video.imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args):
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y", *map(str, args)], check=True)


def with_sound(path, out, codec="aac"):
    """``path`` with a 440 Hz tone as long as its video (``codec``: aac in an mp4, pcm_s16le in a mov)."""
    ffmpeg("-i", path, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=5", "-map", "0:v",
           "-map", "1:a", "-c:v", "copy", "-c:a", codec, "-shortest", out)
    return out


def stream_seconds(path, kind):
    """(packets, seconds) of the first ``kind`` ("v" or "a") stream of ``path``: its packets' end, read without
    decoding."""
    done = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-map", f"0:{kind}:0", "-c", "copy", "-f",
                           "framecrc", "-"], capture_output=True, text=True, check=True)
    base = re.search(r"^#tb 0: (\d+)/(\d+)", done.stdout, re.MULTILINE)
    packets = [(int(pts), int(duration)) for pts, duration in
               re.findall(r"^0,\s*-?\d+,\s*(-?\d+),\s*(\d+),", done.stdout, re.MULTILINE)]
    return len(packets), max(p + d for p, d in packets) * int(base[1]) / int(base[2])


def made_frames(clip, count, folder):
    """The first ``count`` frames of ``clip`` as PNGs, standing in for the frames a run made (max_frames=count)."""
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    clip.init_image().save(paths[0])
    for k, path in enumerate(paths[1:]):
        clip.source_frame(k + 1, clip.size).save(path)
    return paths


@pytest.mark.parametrize("container, codec, audio", [("mp4", "aac", "keep"), ("mov", "pcm_s16le", "keep"),
                                                      ("mp4", "aac", "drop"), ("mp4", None, "keep")])
def test_the_mp4_has_the_rate_count_duration_and_sound_of_the_frames_made(tmp_path, container, codec, audio):
    """12 frames at 12 fps with a tone; 5 of them made (max_frames=5): the mp4 holds those 5 at 12 fps, 5/12 s, and
    the tone cut to them (AAC copied as it is, PCM made AAC), or no sound (io.audio=drop, or none to keep)."""
    source = write_video(tmp_path / "plain.mp4", square_frames(12), fps=12)
    if codec:
        source = with_sound(source, tmp_path / f"clip.{container}", codec)
    clip = VideoClip(str(source), audio=audio)
    paths = made_frames(clip, 5, tmp_path / "frames")
    clip.finish(paths, SimpleNamespace(video=tmp_path / "output.mp4"))
    frames, seconds = stream_seconds(tmp_path / "output.mp4", "v")
    assert frames == 5 and seconds == pytest.approx(5 / 12, abs=1e-3)
    assert iio.immeta(tmp_path / "output.mp4", plugin="FFMPEG")["fps"] == pytest.approx(12)
    if codec and audio == "keep":
        assert stream_seconds(tmp_path / "output.mp4", "a")[1] == pytest.approx(5 / 12, abs=0.03)  # 23 ms a packet
        assert iio.immeta(tmp_path / "output.mp4", plugin="FFMPEG")["audio_codec"] == "aac"
        assert clip.video_notes == ["5 frames at 12 fps, 0.417 s", "sound of io.rgb_video, cut to these frames"]
    else:
        assert "audio_codec" not in iio.immeta(tmp_path / "output.mp4", plugin="FFMPEG")  # no sound stream
        assert clip.video_notes[-1] == ("no sound (io.audio=drop)" if codec else "no sound (io.rgb_video has none)")


def test_a_portrait_phone_clip_comes_out_portrait_and_odd_sizes_are_said(tmp_path):
    """A phone stores portrait video landscape with a rotation in its metadata: it is read and written portrait."""
    stored = write_video(tmp_path / "stored.mp4", square_frames(4, width=36, height=20), fps=8)
    ffmpeg("-display_rotation", 90, "-i", stored, "-c", "copy", tmp_path / "phone.mp4")
    clip = VideoClip(str(tmp_path / "phone.mp4"))
    assert clip.size == (20, 36)  # portrait, as the phone shows it
    clip.finish(made_frames(clip, 4, tmp_path / "frames"), SimpleNamespace(video=tmp_path / "output.mp4"))
    assert decode(tmp_path / "output.mp4")[0].shape == (36, 20, 3)
    odd = tmp_path / "odd.mp4"  # 4:4:4 takes odd sizes (a camera's 4:2:0 does not)
    iio.imwrite(odd, square_frames(3, width=35, height=21), fps=8, codec="libx264", pixelformat="yuv444p",
                macro_block_size=1, ffmpeg_log_level="error")
    clip = VideoClip(str(odd))
    clip.finish(made_frames(clip, 3, tmp_path / "odd"), SimpleNamespace(video=tmp_path / "odd_out.mp4"))
    assert "stored 36x22, the last column/row repeated (H.264 takes even sizes; the PNG frames are 35x21)" in \
        clip.video_notes


def test_a_variable_rate_clip_is_read_at_its_average_rate_keeping_its_timing(tmp_path, caplog):
    """Frames 0-5 at 1/12 s, then a pause of half a second (a phone's low-light rate, two clips joined): read at
    the average rate, the frame on screen at each tick, so the output lasts as the input does."""
    regular = write_video(tmp_path / "regular.mp4", square_frames(12), fps=12)
    ffmpeg("-i", regular, "-vf", "setpts='if(lt(N,6),N/(12*TB),(N+6)/(12*TB))'", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", tmp_path / "variable.mp4")
    assert not video.frame_times(regular).irregular and video.frame_times(tmp_path / "variable.mp4").irregular
    with caplog.at_level("WARNING"):
        clip = VideoClip(str(tmp_path / "variable.mp4"))
    assert "shows its frames at a variable rate" in caplog.text
    frames, seconds = stream_seconds(tmp_path / "variable.mp4", "v")
    assert len(clip) + 1 == pytest.approx(seconds * clip.fps, abs=1.5)  # the frames fill its time at its rate
    decoded = [np.asarray(clip.source_frame(i, clip.size)) for i in range(len(clip) + 1)]
    assert any(np.array_equal(a, b) for a, b in pairwise(decoded))  # the pause: a frame held on screen repeats
