"""perf.compile keeps torch.compile's caches in qvedit's cache folder (qvedit.models.perf.use_compile_cache)."""

import os

from qvedit.core.files import cache_dir
from qvedit.models.perf import use_compile_cache


def test_the_caches_go_to_qveditss_folder_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("QVEDIT_CACHE", str(tmp_path / "cache"))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert use_compile_cache() == tmp_path / "cache" / "torch-compile" == cache_dir() / "torch-compile"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # set by PyTorch itself: replaced
    monkeypatch.delenv("TRITON_CACHE_DIR")
    assert use_compile_cache() == tmp_path / "cache" / "torch-compile"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's own: kept
    assert use_compile_cache() == tmp_path / "mine"


def test_inductor_reads_its_cache_folder_from_there(monkeypatch, tmp_path):
    """Inductor's FX graph and AOT autograd caches and Triton's kernels all live under ``cache_dir()``, which
    reads the variable at every call (benchmarks/compile_cache.py shows a second process using them)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir, triton_cache_dir

    monkeypatch.setenv("QVEDIT_CACHE", str(tmp_path))
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    folder = use_compile_cache()
    assert inductor_cache_dir() == str(folder) and triton_cache_dir(0).startswith(str(folder))
