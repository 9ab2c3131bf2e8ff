import torch

from qvedit.cli import selftest

NAMES = ["sobel backward", "laplacian backward", "gram backward", "torchvision", "vgg16 imagenet weights"]


def test_main_passes_and_prints_every_check(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # weights missing: informational only
    assert selftest.main([]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split(" | ")[0].strip() == "check"
    for name in NAMES:
        row = next(line for line in lines if line.startswith(name))
        assert " | " in row
    weights_row = next(line for line in lines if line.startswith("vgg16 imagenet weights"))
    assert "missing" in weights_row and "ttlg.gram_scale>0" in weights_row
    assert "the default metrics" in weights_row and "metrics=none" in weights_row
    # the table is aligned: every row has its separators at the same columns
    separators = {tuple(i for i, ch in enumerate(line) if ch == "|")[:2] for line in lines[: len(NAMES) + 1]}
    assert len(separators) == 1
    assert out.rstrip().endswith("selftest passed")


def test_run_checks_rows():
    rows = selftest.run_checks()
    assert [r[0] for r in rows] == NAMES
    assert all(isinstance(ok, bool) and isinstance(detail, str) for _, ok, detail, _ in rows)
    assert [r[3] for r in rows] == [True, True, True, True, False]


def test_main_fails_when_a_required_check_fails(capsys, monkeypatch):
    monkeypatch.setattr(selftest, "check_gram_backward", lambda: (False, "gradient is all zero"))
    assert selftest.main([]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("gram backward"))
    assert "FAIL" in row and "gradient is all zero" in row
    assert "selftest failed: gram backward" in out


def test_a_crashing_check_is_a_failed_row(capsys, monkeypatch):
    def broken(op):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(selftest, "check_edge_backward", broken)
    assert selftest.main([]) == 1
    assert "RuntimeError: kaboom" in capsys.readouterr().out


def test_zero_gradient_is_detected():
    assert selftest._grad_ok(torch.zeros(3)) == (False, "gradient is all zero")
    assert selftest._grad_ok(torch.tensor([1.0, float("nan")]))[0] is False
    assert selftest._grad_ok(None)[0] is False
