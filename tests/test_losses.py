import sys
import urllib.error

import pytest
import torch

from qvedit.core.errors import QveditError
from qvedit.guidance.edges import sobel_edges
from qvedit.guidance.losses import (
    VGGStyle,
    edge_loss,
    gram_loss,
    gram_matrix,
    resize_long_side,
    temporal_loss,
    vgg16_weights_path,
)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vgg():
    return VGGStyle(weights="random")


@pytest.mark.parametrize(
    "shape, size, expected",
    [
        ((1, 3, 100, 50), 40, (40, 20)),
        ((1, 3, 50, 100), 40, (20, 40)),
        ((2, 1, 90, 60), 30, (30, 20)),
        ((1, 3, 30, 20), 64, (30, 20)),  # never upsampled
        ((1, 3, 30, 20), None, (30, 20)),
    ],
)
def test_resize_long_side(shape, size, expected):
    out = resize_long_side(rand(*shape), size)
    assert out.shape == shape[:2] + expected


def test_resize_long_side_is_differentiable():
    img = rand(1, 3, 64, 48).requires_grad_()
    resize_long_side(img, 16).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_edge_loss_is_zero_against_own_edges_and_positive_otherwise():
    img = rand(1, 3, 32, 32)
    assert edge_loss(img, sobel_edges(img)) < 1e-6
    assert edge_loss(img, torch.zeros(1, 1, 32, 32)) > 0.05


def test_edge_loss_resizes_image_and_target():
    img = rand(1, 3, 64, 96)
    small = resize_long_side(img, 48)
    # a target at full size is area-shrunk to the resized image
    target = sobel_edges(img)
    shrunk = torch.nn.functional.interpolate(target, size=(32, 48), mode="area")
    expected = (sobel_edges(small) - shrunk).abs().mean()
    assert torch.allclose(edge_loss(img, target, size=48), expected)
    # a smaller target is upsampled to it
    assert edge_loss(img, rand(1, 1, 8, 12), size=48).ndim == 0


def test_edge_loss_gradient_flows_and_op_is_checked():
    img = rand(1, 3, 32, 32).requires_grad_()
    loss = edge_loss(img, rand(1, 1, 32, 32, seed=1), op="laplacian", size=16)
    assert loss.ndim == 0
    loss.backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    with pytest.raises(QveditError, match="sobel"):
        edge_loss(img, rand(1, 1, 32, 32), op="canny")


def test_gram_matrix_by_hand():
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, -1.0]]).reshape(1, 3, 1, 2)
    flat = feat.reshape(3, 2)
    expected = torch.tensor(
        [[flat[i] @ flat[j] for j in range(3)] for i in range(3)]
    ) / (3 * 1 * 2)
    assert torch.allclose(gram_matrix(feat)[0], expected)
    assert torch.allclose(expected[0], torch.tensor([5.0, 11.0, -2.0]) / 6)


def test_gram_loss_zero_for_same_image_positive_for_another(vgg):
    x, y = rand(1, 3, 48, 48), rand(1, 3, 48, 48, seed=1).pow(3)
    gx = vgg.grams(x)
    assert [g.shape for g in gx] == [(1, 64, 64), (1, 128, 128), (1, 256, 256), (1, 512, 512)]
    assert gram_loss(gx, vgg.grams(x)) == 0
    assert gram_loss(gx, vgg.grams(y)) > 0


def test_grams_cast_to_float32_and_resize(vgg):
    img = rand(1, 3, 64, 32).to(torch.float64)
    grams = vgg.grams(img, size=32)
    assert all(g.dtype == torch.float32 for g in grams)
    assert torch.allclose(grams[0], vgg.grams(resize_long_side(img.float(), 32))[0])


def test_gram_loss_backward(vgg):
    img = rand(1, 3, 32, 32).requires_grad_()
    with torch.no_grad():
        ref = vgg.grams(rand(1, 3, 32, 32, seed=1))
    gram_loss(vgg.grams(img), ref).backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0


def test_random_vgg_is_reproducible_frozen_and_leaves_global_rng_alone(vgg):
    torch.manual_seed(123)
    untouched = torch.rand(4)
    torch.manual_seed(123)
    other = VGGStyle(weights="random")
    assert torch.equal(torch.rand(4), untouched)

    for (name, a), (_, b) in zip(vgg.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
    params = list(other.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(p.dtype == torch.float32 for p in params)
    assert not other.training
    assert len(other.features) == 23


def test_invalid_weights_value():
    with pytest.raises(QveditError, match="random"):
        VGGStyle(weights="vgg19")


def test_imagenet_weights_missing_offline_names_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert vgg16_weights_path() == expected

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(QveditError) as info:
        VGGStyle(weights="imagenet")
    message = str(info.value)
    assert str(expected) in message
    assert "ttlg.vgg_weights=random" in message
    assert "\n" not in message


def test_imagenet_weights_load_from_cache_without_download(tmp_path, monkeypatch, vgg):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = vgg16_weights_path()
    path.parent.mkdir(parents=True)
    # a full-VGG16-style state dict: features.* (with layers past relu4_3) plus a classifier entry
    state = {f"features.{k}": v for k, v in vgg.features.state_dict().items()}
    state["features.24.weight"] = torch.zeros(512, 512, 3, 3)
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    loaded = VGGStyle(weights="imagenet")
    for (name, a), (_, b) in zip(vgg.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_corrupt_cached_weights_raise_qvedit_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = vgg16_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(QveditError, match="delete it"):
        VGGStyle(weights="imagenet")


def test_temporal_loss():
    x = rand(1, 3, 128, 96)
    assert temporal_loss(x, x) == 0
    assert temporal_loss(x, x.flip(-1)) > 0
    # prev at another size is resized to the resized img
    assert temporal_loss(x, resize_long_side(x, 64)) < 1e-6
    assert temporal_loss(x, x[:, :, :64, :48], size=None).ndim == 0


def test_temporal_loss_gradient_flows():
    x = rand(1, 3, 80, 80).requires_grad_()
    temporal_loss(x, rand(1, 3, 80, 80, seed=1)).backward()
    assert x.grad.abs().sum() > 0


def test_missing_torchvision_is_a_qvedit_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(QveditError, match="ttlg.gram_scale=0"):
        VGGStyle(weights="random")
