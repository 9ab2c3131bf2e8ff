"""``ttlg.decoder=tiny``: a tiny decoder for the guidance decode, in place of the full-size VAE.

The architecture is the decoder of madebyollin/taehv (``taehv.py``, class ``TAEHV``) for the ``taew2_1``
weights, the tiny autoencoder of Wan 2.1's latent space, which Qwen-Image shares (taehv's README: load
``taew2_1`` for Qwen Image). It is written here again with the same parameter names
(``decoder.<index>.<...>``), so the published ``taew2_1.safetensors`` loads into it key for key. What
taehv's code says about its inputs and outputs, and what qvedit does with it:

- latents as the diffusion model makes them: taehv applies no ``latents_mean`` / ``latents_std`` ("TAEHV
  encodes / decodes exactly what diffusion models use"), so the guidance feeds it the unpacked latents
  before the pipeline's de-normalisation; its first layer soft-clamps them to (-3, 3) (``tanh(x / 3) * 3``);
- the image in [0, 1] (taehv clamps its output there), the range the guidance losses take;
- one frame: a video latent grows in time in two of the three upsampling stages (``TGrow``); qvedit
  decodes a single frame with that growth off (taehv's ``decoder_time_upscale=(False, False)``, its
  "cheaper preview" setting): each ``TGrow`` keeps the weights of its last output time step (taehv's
  ``patch_tgrow_layers`` does the same), and every ``MemBlock``'s memory of the frame before is zeros
  (a first frame has none), so only the first half of its first convolution's input channels meets data.

Weights: ``ttlg.tiny_decoder`` names a ``.safetensors`` file, a folder holding ``taew2_1.safetensors``
(or one ``.safetensors`` file), or a Hugging Face hub file ``owner/name`` (its ``taew2_1.safetensors``)
or ``owner/name/path/in/repo.safetensors``; ``random`` builds seeded random weights (tests and timing
only). The file's keys and shapes are checked against the architecture before the model loads, from
its header alone; encoder keys are ignored (guidance only decodes).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from qvedit.core.errors import QveditError
from qvedit.models import cache
from qvedit.models.integrity import safetensors_problem
from qvedit.settings.guidance import TTLGSettings

log = logging.getLogger(__name__)

WEIGHT_NAME = "taew2_1.safetensors"
PUBLISHED = "https://github.com/madebyollin/taehv/raw/main/safetensors/taew2_1.safetensors"
QWEN_LATENT_CHANNELS, QWEN_STAGES = 16, 3  # taew2_1: Wan 2.1 / Qwen-Image latents, 8x upsampling
WIDTHS = (256, 128, 64, 64)  # channels of taehv's base decoder: per stage, then the last convolution's
RANDOM_SEED = 0
HUB_FILE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")  # owner/name[/path/in/repo]


def conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """taehv's residual block with a memory input, for a frame without a past: the memory is zeros.

    ``conv.0`` takes (frame, memory) stacked on channels, 2 * n channels; with zero memory only its first n
    input channels contribute, so they alone are applied (the same sum, half the work).
    """

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n * 2, n), nn.ReLU(inplace=True), conv(n, n), nn.ReLU(inplace=True), conv(n, n))
        self.skip = nn.Identity()  # taehv's skip is a 1x1 convolution only where the widths differ; here they do not
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv[0]
        h = F.conv2d(x, first.weight[:, : x.shape[1]], first.bias, padding=1)
        return self.act(self.conv[1:](h) + self.skip(x))


class TGrow(nn.Module):
    """taehv's temporal upsampling without growth (stride 1): a 1x1 convolution."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Conv2d(n, n, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TinyDecoder(nn.Module):
    """taehv's decoder for one frame: ``forward(z)`` (B, latent_channels, h, w) latents as the diffusion model
    makes them -> (B, 3, h * 2**stages, w * 2**stages) in [0, 1].

    ``stages`` of taehv's three upsampling stages double the size (taew2_1: all three, 8x, like the
    Qwen-Image VAE); the others keep it (taehv's ``decoder_space_upscale``), so the same parameters fit a
    VAE that upsamples 4x (the tiny test model's).
    """

    def __init__(self, latent_channels: int = QWEN_LATENT_CHANNELS, stages: int = QWEN_STAGES):
        super().__init__()
        if not 0 <= stages <= 3:
            raise ValueError(f"taehv's decoder has 3 upsampling stages, not {stages}")
        self.latent_channels, self.stages = latent_channels, stages
        layers: list[nn.Module] = [Clamp(), conv(latent_channels, WIDTHS[0]), nn.ReLU(inplace=True)]
        for stage in range(3):
            n = WIDTHS[stage]
            layers += [MemBlock(n), MemBlock(n), MemBlock(n), nn.Upsample(scale_factor=2 if stage < stages else 1),
                       TGrow(n), conv(n, WIDTHS[stage + 1], bias=False)]
        layers += [nn.ReLU(inplace=True), conv(WIDTHS[3], 3)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(0, 1)

    def tgrow_keys(self) -> set[str]:
        return {f"decoder.{i}.conv.weight" for i, layer in enumerate(self.decoder) if isinstance(layer, TGrow)}


# -- the weights file: found, checked (before the model loads), loaded ---------------------------------

def weights_file(spec: str) -> Path:
    """The local safetensors file ``ttlg.tiny_decoder`` names (a hub file is fetched into the cache): a path that
    exists is local; otherwise ``owner/name[/file]`` is a hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / WEIGHT_NAME).is_file():
            return path / WEIGHT_NAME
        found = sorted(p for p in path.glob("*.safetensors") if p.is_file())  # a folder of that name is no file
        if len(found) == 1:
            return found[0]
        what = f"{len(found)} .safetensors files and no {WEIGHT_NAME}" if found else "no .safetensors file"
        if (path / WEIGHT_NAME).exists():
            what += f" ({WEIGHT_NAME} there is a folder)"
        raise QveditError(f"ttlg.tiny_decoder={spec}: the folder holds {what}: name the file")
    if HUB_FILE.match(spec) and not spec.startswith((".", "~")):
        return hub_file(spec)
    raise QveditError(f"ttlg.tiny_decoder={spec}: no such file or folder, and not a hub id owner/name[/file] "
                      f"(the taew2_1 weights: {PUBLISHED})")


def hub_file(spec: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    owner, name, *inside = spec.split("/", 2)
    repo, filename = f"{owner}/{name}", inside[0] if inside else WEIGHT_NAME
    try:
        return Path(hf_hub_download(repo, filename))
    except LocalEntryNotFoundError:
        raise QveditError(f"ttlg.tiny_decoder={spec}: {filename} of {repo} is not in the Hugging Face cache and the "
                          f"hub cannot be reached: download it first (huggingface-cli download {repo} {filename}) or "
                          f"give a local file ({PUBLISHED})") from None
    except (EntryNotFoundError, RepositoryNotFoundError, OSError) as err:
        raise QveditError(f"ttlg.tiny_decoder={spec}: cannot fetch {filename} from {repo} ({type(err).__name__}); "
                          f"give a local file ({PUBLISHED})") from None


def header_shapes(file: Path) -> dict[str, tuple]:
    """{tensor name: shape} from a safetensors file's header (no tensor is read)."""
    with open(file, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def fit_problem(shapes: dict[str, tuple], model: TinyDecoder) -> Optional[str]:
    """The first key of ``shapes`` (a file's decoder tensors) that does not fit ``model``, in words; None if all do.
    A time-upsampling layer may hold more output rows than ``model`` uses (it keeps the last ones)."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tgrow = model.tgrow_keys()
    for name, shape in expected.items():
        if name not in shapes:
            return f"it has no {name}"
        found = shapes[name]
        fits = found == shape or (name in tgrow and len(found) == 4 and found[1:] == shape[1:]
                                  and found[0] % shape[0] == 0)
        if not fits:
            return f"{name} has shape {list(found)} where the decoder takes {list(shape)}"
    extra = sorted(name for name in shapes if not name.startswith("encoder.") and name not in expected)
    return f"{extra[0]} is no parameter of taehv's decoder" if extra else None


def checked_file(spec: str) -> Path:
    """``ttlg.tiny_decoder``'s file, whole and holding taew2_1's decoder (16 latent channels, 8x)."""
    file = weights_file(spec)
    if file.suffix != ".safetensors":
        raise QveditError(f"ttlg.tiny_decoder: {file} is not a .safetensors file; qvedit loads weights from "
                          f"safetensors only (unpickling can run any code): use {PUBLISHED}")
    try:
        problem = safetensors_problem(file)
        if problem is None:
            problem = fit_problem(header_shapes(file), TinyDecoder())
    except OSError as err:  # unreadable: permissions, a file that went away, a failing disk
        raise QveditError(f"ttlg.tiny_decoder: cannot read {file}: {err.strerror or err}") from None
    if problem:
        raise QveditError(f"ttlg.tiny_decoder: {file} does not hold the taew2_1 tiny decoder: {problem}")
    return file


def required(spec: Optional[str]) -> str:
    if not spec:
        raise QveditError(f"ttlg.decoder=tiny needs its weights: ttlg.tiny_decoder=<a taew2_1.safetensors file, a "
                          f"folder holding it, or a hub id> ({PUBLISHED}), or ttlg.decoder=vae")
    return spec


def check_decoder(ttlg: TTLGSettings) -> None:
    """Before the model loads: with guidance on and ``ttlg.decoder=tiny``, its weights are there and fit."""
    if ttlg.enabled and ttlg.decoder == "tiny" and required(ttlg.tiny_decoder) != "random":
        checked_file(ttlg.tiny_decoder)


def load_weights(model: TinyDecoder, file: Path) -> None:
    from safetensors.torch import load_file

    state = {name: t for name, t in load_file(str(file)).items() if name.startswith("decoder.")}
    for name in model.tgrow_keys():
        state[name] = state[name][-model.state_dict()[name].shape[0]:]  # the last output time step's rows
    model.load_state_dict(state, strict=True)


def random_decoder(latent_channels: int, stages: int) -> TinyDecoder:
    """Seeded random weights (``ttlg.tiny_decoder=random``: tests and timing only) whose image is neither black nor
    clamped: convolutions drawn for ReLU networks (He), then the last one scaled so that standard normal latents
    give an image of mean 0.5 and standard deviation 0.2."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = TinyDecoder(latent_channels, stages)
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        last = model.decoder[-1]
        with torch.no_grad():
            raw = model.decoder(torch.randn(1, latent_channels, 16, 16))  # before the output clamp
            last.weight.mul_(0.2 / raw.std())
            last.bias.fill_(0.5 - raw.mean().item() * 0.2 / raw.std().item())
    return model


def tiny_decoder(spec: Optional[str], vae, scale_factor: int, device: torch.device) -> TinyDecoder:
    """The frozen tiny decoder for ``vae``'s latents (its ``z_dim``, its upsampling ``scale_factor``), on ``device``
    in ``vae``'s dtype.

    ``random``: seeded random weights, made for the VAE at hand (the tiny test model's 4 latent channels
    and 4x upsampling). A file holds taew2_1's decoder and needs the Qwen-Image VAE's 16 channels and 8x.
    """
    channels = vae.config.z_dim
    stages = int(scale_factor).bit_length() - 1  # 8x: 3 doubling stages
    file = None if required(spec) == "random" else checked_file(spec)
    if file is not None and (channels, stages) != (QWEN_LATENT_CHANNELS, QWEN_STAGES):
        raise QveditError(f"ttlg.tiny_decoder: {file} decodes {QWEN_LATENT_CHANNELS}-channel latents 8x (Qwen-Image), "
                          f"but this model's VAE makes {channels}-channel latents and upsamples {2 ** stages}x: use "
                          "ttlg.tiny_decoder=random (tests) or ttlg.decoder=vae")
    identity = ("random",) if file is None else (str(file.resolve()), file.stat().st_mtime_ns)

    def build() -> TinyDecoder:
        cache.release("tiny_decoder")  # one decoder per weights, size and placement in a process
        if file is None:
            model = random_decoder(channels, stages)
        else:
            model = TinyDecoder(channels, stages)
            load_weights(model, file)
            log.info("guidance decodes with the tiny decoder %s", file)
        return model.requires_grad_(False).eval().to(device, vae.dtype)

    return cache.shared(("tiny_decoder", *identity, channels, stages, str(device), vae.dtype), build)
