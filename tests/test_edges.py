import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.guidance.edges import (
    EDGE_OPS,
    edge_map,
    edges_to_uint8,
    image_to_edge_target,
    laplacian_edges,
    sobel_edges,
    to_grayscale,
)
from qvedit.guidance.losses import edge_loss


def vertical_step(h=8, w=10, col=5, channels=3):
    """(1,C,h,w): 0 left of ``col``, 1 from ``col`` on."""
    img = torch.zeros(1, channels, h, w)
    img[..., col:] = 1.0
    return img


def test_grayscale_weights_and_passthrough():
    img = torch.zeros(2, 3, 4, 5)
    img[:, 0], img[:, 1], img[:, 2] = 1.0, 0.5, 0.25
    gray = to_grayscale(img)
    assert gray.shape == (2, 1, 4, 5)
    assert torch.allclose(gray, torch.full_like(gray, 0.2989 + 0.5870 * 0.5 + 0.1140 * 0.25))
    one = torch.rand(2, 1, 4, 5)
    assert torch.equal(to_grayscale(one), one)


@pytest.mark.parametrize("op", sorted(EDGE_OPS))
def test_flat_image_has_no_edges(op):
    edges = edge_map(torch.full((2, 3, 16, 12), 0.7), op)
    assert edges.shape == (2, 1, 16, 12)
    assert edges.max() < 2e-3


@pytest.mark.parametrize("op", sorted(EDGE_OPS))
@pytest.mark.parametrize("channels", [1, 3])
def test_step_edge_is_one_beside_the_step_and_zero_elsewhere(op, channels):
    edges = edge_map(vertical_step(col=5, channels=channels), op)[0, 0]
    assert edges.shape == (8, 10)
    # the luma weights sum to 0.9999, so a white-on-black step is 0.9999 high
    assert torch.allclose(edges[:, 4:6], torch.ones(8, 2), atol=2e-4)
    others = torch.cat([edges[:, :4], edges[:, 6:]], dim=1)
    assert others.max() < 2e-3


def test_horizontal_step_and_image_border_give_no_spurious_edges():
    img = vertical_step(h=10, w=8, col=5, channels=1).transpose(-1, -2)
    edges = sobel_edges(img)[0, 0]
    assert edges.shape == (8, 10)
    assert torch.allclose(edges[4:6], torch.ones(2, 10))
    # replicate padding: the border rows and columns are not edges
    assert edges[0].max() < 2e-3 and edges[-1].max() < 2e-3


def test_outputs_stay_in_unit_range_on_noise():
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for fn in (sobel_edges, laplacian_edges):
        edges = fn(img)
        assert edges.min() >= 0 and edges.max() <= 1


def test_gradient_is_finite_on_flat_regions():
    img = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    (sobel_edges(img).sum() + laplacian_edges(img).sum()).backward()
    assert torch.isfinite(img.grad).all()


def test_unknown_op_raises_naming_the_choices():
    with pytest.raises(QveditError, match="laplacian, sobel"):
        edge_map(torch.zeros(1, 3, 4, 4), "canny")


def test_edges_to_uint8_rounds_and_accepts_both_shapes():
    edge = torch.tensor([[0.0, 0.5, 1.0], [0.1, 0.999, 0.002]])
    expected = np.array([[0, 128, 255], [26, 255, 1]], dtype=np.uint8)
    for shaped in (edge, edge[None, None]):
        out = edges_to_uint8(shaped)
        assert out.dtype == np.uint8 and out.shape == (2, 3)
        np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError):
        edges_to_uint8(torch.zeros(2, 1, 3, 3))


def test_image_to_edge_target_any_mode():
    gray = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    for mode in ("L", "RGB", "RGBA", "P"):
        image = Image.fromarray(gray).convert(mode)
        target = image_to_edge_target(image)
        assert target.shape == (1, 1, 2, 2) and target.dtype == torch.float32
        assert torch.allclose(target[0, 0], torch.tensor([[0.0, 0.2], [1.0, 0.4]]), atol=1e-6)


def test_png_round_trip_matches_sobel_up_to_quantisation(tmp_path):
    img = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    edges = sobel_edges(img)
    path = tmp_path / "edge.png"
    Image.fromarray(edges_to_uint8(edges)).save(path)
    with Image.open(path) as image:
        target = image_to_edge_target(image)
    assert (target - edges).abs().max() <= 0.5 / 255 + 1e-6
    assert edge_loss(img, target, op="sobel") < 1 / 255 + 1e-4
