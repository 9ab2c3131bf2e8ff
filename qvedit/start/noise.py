"""The noise each frame starts from (``start.noise``), made again exactly from (seed, frame) on every rank and on
resume: each kind of draw has its own stream of seeds, so none meets another's (or a frame's own generator's)."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import numpy as np
import torch

from qvedit.guidance.noise_warp import fine_field, fine_flow, latent_noise, transport
from qvedit.guidance.optical_flow import FlowPair

# spawn keys of the seed streams (first_frame.py's candidates use 0x46524D30): none meets a frame's (seed, i)
SHARED_STREAM = 0x53545348  # the one noise of start.noise=shared
FRESH_STREAM = 0x53544652  # the fresh values of frame k's warped field (all of frame 1's)
OFFSET_STREAM = 0x53544f46  # frame k's rounding offset of the transport

log = logging.getLogger(__name__)


def frame_seed(seed: int, frame_index: int) -> int:
    """The seed of one frame's generator, from (run seed, frame index): any frame can be remade alone."""
    return int(np.random.SeedSequence([seed, frame_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def stream_generator(seed: int, frame_index: int, stream: int) -> torch.Generator:
    """A CPU generator for one kind of draw (``stream``) of one frame, from (run seed, frame index)."""
    sequence = np.random.SeedSequence([seed, frame_index], spawn_key=(stream,))
    return torch.Generator().manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1))


class FrameNoise:
    """The starting noise of a clip's frames, (1, C, h, w) float32 on the CPU, frame after frame.

    ``independent``: frame k's own, drawn from its generator (``frame_seed``) as the pipeline draws it on the CPU
    in float32; ``shared``: one for the whole run; ``warped``: fresh at the first frame of a chain (frame 1; with
    ``schedule=segments`` also each keyframe), then frame k's is frame k-1's carried along the flow from frame k-1
    to k (``qvedit.guidance.noise_warp``), on a fine grid of ``factor`` cells a latent cell (the VAE's scale factor:
    a cell per pixel), worked on ``device``. The field of the frame asked for last is kept: the next frame costs
    one warp; any other (a resumed run's first, another segment's) is carried again from its chain's start.
    """

    def __init__(self, kind: str, seed: int, grid: tuple[int, int, int], factor: int, device="cpu"):
        """grid: (C, h, w) of the unpacked latents (the model family's ``latent_grid``)."""
        self.kind, self.seed, self.grid, self.factor, self.device = kind, seed, grid, factor, torch.device(device)
        self.shared: Optional[torch.Tensor] = None
        self.field: Optional[torch.Tensor] = None  # the warped noise's fine field (s*h, s*w, C) of frame `made`
        self.made: Optional[tuple[int, int]] = None  # (chain start, frame) of `field`

    def noise(self, index: int, pair: Optional[FlowPair] = None, chain_start: int = 1,
              pair_of: Optional[Callable[[int], FlowPair]] = None) -> torch.Tensor:
        """Frame ``index``'s noise (1, C, h, w). Warped noise: ``chain_start`` is the frame whose noise is fresh,
        ``pair`` the flow from frame ``index`` back to ``index - 1`` and ``pair_of(j)`` that of any frame j (for the
        frames between the chain's start and ``index`` when they must be carried again)."""
        channels, height, width = self.grid
        if self.kind == "independent":
            generator = torch.Generator().manual_seed(frame_seed(self.seed, index))
            return torch.randn((1, channels, height, width), generator=generator)
        if self.kind == "shared":
            if self.shared is None:
                generator = stream_generator(self.seed, 0, SHARED_STREAM)
                self.shared = torch.randn((1, channels, height, width), generator=generator)
            return self.shared
        if index < chain_start:
            raise ValueError(f"frame {index} comes before its chain's start {chain_start}")
        if self.made != (chain_start, index - 1) and index > chain_start:
            if pair_of is None:
                raise ValueError(f"warped noise of frame {index} asked for after frame {self.made}, without the flow "
                                 "of the frames between")
            started = time.perf_counter()
            self.step(chain_start, chain_start, None)
            for between in range(chain_start + 1, index):
                self.step(chain_start, between, pair_of(between))
            if index - chain_start > 1:
                log.info("start.noise=warped: the noise of frames %d..%d carried again along the flow in %.1f s",
                         chain_start, index - 1, time.perf_counter() - started)
        if index > chain_start and pair is None:
            pair = pair_of(index) if pair_of is not None else None
            if pair is None:
                raise ValueError(f"warped noise of frame {index} needs its flow")
        return latent_noise(self.step(chain_start, index, pair), self.factor).cpu()

    def step(self, chain_start: int, index: int, pair: Optional[FlowPair]) -> torch.Tensor:
        """The fine field of frame ``index``: fresh at ``chain_start``, else the kept one of ``index - 1`` carried
        along ``pair``."""
        channels, height, width = self.grid
        size = (height * self.factor, width * self.factor)
        fresh_values = stream_generator(self.seed, index, FRESH_STREAM)

        def fresh(count: int) -> torch.Tensor:
            return torch.randn((count, channels), generator=fresh_values)

        if index == chain_start:
            self.field = fine_field(fresh, channels, *size).to(self.device)
        else:
            backward, valid = fine_flow(pair.backward.to(self.device), pair.valid.to(self.device), size)
            offset = torch.rand(2, generator=stream_generator(self.seed, index, OFFSET_STREAM)).tolist()
            self.field = transport(self.field, backward, valid, (offset[0], offset[1]), fresh)
        self.made = (chain_start, index)
        return self.field
