"""A run's report.html as a reader meets it in headless Chromium: dated title, the Chinese prompt, the mp4."""

import pandas as pd
from PIL import Image

from qvedit.report.html import write_run_html
from qvedit.settings.run import DEFAULT_PROMPT
from tests.browser import assert_page_is_whole


def test_a_run_page_is_dated_names_a_cjk_font_for_the_prompt_and_links_the_video(tmp_path):
    run = tmp_path / "runs" / "2026-12-01" / "07-29-44"
    run.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 40, 20)).save(run / "preview.png")
    (run / "output.mp4").write_bytes(b"\0")
    (run / "metrics.csv").write_text(  # every column a run writes: the headers must break at "_" only
        "frame,edge_loss,gram_loss,warp_error,color_drift,edge_offset_px,lpips_to_init,lpips_to_prev,clip_consistency,"
        "seconds,guided_steps,peak_mem_mib\n1,0.0465383,0.000398123,0.0499612,39.2512,8.34712,0.127412,0.0804123,"
        "0.912345,2.0123,8,1234.5\n")
    long_path = "/data/" + "a_folder_name_with_no_space_to_break_at_" * 6 + "/init.png"
    write_run_html(run, [f"qvedit: made frames 1..1 of 2 -> {run / 'frames'}", f"  video: {run / 'output.mp4'}"],
                   {"prompt": DEFAULT_PROMPT, "io.init_frame": long_path, "seed": 0},
                   pd.read_csv(run / "metrics.csv"), run / "metrics.csv",
                   [(run / "preview.png", "contact sheet")], videos=[run / "output.mp4"])
    page = assert_page_is_whole(run / "report.html")  # loads, every image and link there, fits 1280 px
    assert page["title"] == "qvedit run 2026-12-01 07-29-44"
    assert "made frames 1..1 of 2 -> frames" in page["text"] and "video: output.mp4" in page["text"]
    assert str(run) not in page["text"]  # the summary's paths are relative to the page, which lies beside them
    assert "output.mp4" in page["links"]
    assert "The prompt is shown as text below" in page["text"]
    (font,) = [family for text, family in page["fonts"].items() if text == DEFAULT_PROMPT]
    assert "Noto Sans CJK SC" in font  # a fallback list a browser picks a CJK font from
