"""The two training stages of the toy model, one optimiser step at a time (``qvedit.toy.train`` runs them).

- ``VAEStage``: the VAE learns to reconstruct frames and edge maps (L1 on pixels and on their Sobel edges), like any
  image autoencoder; afterwards its latents are normalised per channel (``latents_mean`` / ``latents_std`` in its
  config, as the real VAE's are).
- ``TransformerStage``: flow matching, as the real model is trained. With x0 the normalised latents of the target
  frame and n Gaussian noise, x_sigma = (1 - sigma) x0 + sigma n and the transformer predicts the velocity n - x0
  (the pipeline's Euler step is x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v). sigma is drawn uniformly and shifted as
  the pipeline's scheduler shifts it for a 64x64 frame; the transformer is called exactly as the pipeline calls it
  (packed latents of the frame then of each condition image, ``timestep`` = sigma, ``img_shapes``), and an
  exponential moving average of its weights is what is kept.

Every step draws its randomness from (seed, stage, step), so a run resumed from a checkpoint goes on exactly as it
would have.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from qvedit.guidance.edges import sobel_edges
from qvedit.toy.data import KINDS, Recipe, draw_example


def step_seed(seed: int, stage: str, step: int) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, stage)), step]).generate_state(1)[0])


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, 1, H, W) float in [-1, 1], as the pipeline preprocesses images for its VAE."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1)[:, :, None]


def cosine_lr(base: float, step: int, steps: int, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class VAEStage:
    """Reconstruction training of the VAE on random crops of the training clips' frames (any style) and edge maps.

    It is trained as a plain autoencoder on the posterior's mode, which is what the pipeline encodes images with
    (``sample_mode="argmax"``), with a small penalty on the latents' size; a sampled posterior learnt far slower
    here. Crops of ``recipe.vae_crop`` pixels make a step 4x cheaper than whole 64x64 frames and the VAE, being
    convolutional, decodes any size. Edge maps (nearly black) join late, see ``EDGES_FROM``."""

    EDGES_FROM = 0.6  # edge maps join the batches after this share of the steps: learnt from the start, they kept
    EDGE_SHARE = 0.25  # the VAE at its first solution (every pixel the median colour) for the whole run

    def __init__(self, vae, recipe: Recipe, frames: np.ndarray, edges: np.ndarray):
        """frames, edges: (N, H, W, 3) uint8, the frames (every style, and the sources) and edge maps to learn from."""
        self.vae, self.recipe, self.frames, self.edges = vae.train(), recipe, frames, edges
        self.device = next(vae.parameters()).device  # batches are drawn on the CPU and moved there
        self.optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)

    def step(self, step: int) -> float:
        recipe = self.recipe
        rng = np.random.default_rng(step_seed(recipe.seed, "vae", step))
        edge_count = round(self.EDGE_SHARE * recipe.vae_batch) if step >= self.EDGES_FROM * recipe.vae_steps else 0
        picked = np.concatenate([self.frames[rng.choice(len(self.frames), recipe.vae_batch - edge_count)],
                                 self.edges[rng.choice(len(self.edges), edge_count)]])
        top, left = (int(rng.integers(0, side - recipe.vae_crop + 1)) for side in picked.shape[1:3])
        batch = to_model_range(picked[:, top:top + recipe.vae_crop, left:left + recipe.vae_crop]).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(recipe.vae_lr, step, recipe.vae_steps, warmup=50)
        latents = self.vae.encode(batch).latent_dist.mean  # the mode, as the pipeline encodes its images
        out = self.vae.decode(latents).sample
        images, target = (out[:, :, 0] + 1) / 2, (batch[:, :, 0] + 1) / 2
        loss = F.l1_loss(images, target) + F.l1_loss(sobel_edges(images), sobel_edges(target)) + \
            1e-4 * latents.pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.optimizer.step()
        return loss.item()

    def state(self) -> dict:
        return {"vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def normalise_latents(vae, frames: np.ndarray) -> None:
    """Set ``latents_mean`` / ``latents_std`` in the VAE's config from the per-channel statistics of ``frames``'
    latents, so the normalised latents the transformer sees have zero mean and unit deviation per channel."""
    device = next(vae.parameters()).device
    latents = torch.cat([vae.encode(to_model_range(frames[i:i + 64]).to(device)).latent_dist.mode().cpu()
                         for i in range(0, len(frames), 64)])
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3)
    vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                           latents_std=[round(float(v), 6) for v in std])


@torch.no_grad()
def encode_frames(vae, frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, C, H/4, W/4) float16: the normalised latents the pipeline makes of an image
    (``_encode_vae_image``: the posterior's mode, then (z - latents_mean) / latents_std)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    device = next(vae.parameters()).device
    out = [((vae.encode(to_model_range(frames[i:i + 64]).to(device)).latent_dist.mode().cpu() - mean) / std)[:, :, 0]
           for i in range(0, len(frames), 64)]
    return torch.cat(out).half()


def flow_sigmas(u: torch.Tensor, mu: float) -> torch.Tensor:
    """Uniform ``u`` in (0, 1) shifted as the scheduler shifts its sigmas (``time_shift_type="exponential"``)."""
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


class TransformerStage:
    """Flow-matching training of the transformer on the encoded training clips.

    ``latents[kind]``: (clips, T, C, h, w) float16 for kind in "source", "styled", "edges"; ``prompts``: {(prompt,
    images): ((pool, L, D) embeddings, (pool, L) mask)}; ``pack``: the pipeline's ``_pack_latents``; ``mu``: the
    scheduler's shift for a frame of this size (``calculate_shift`` of its packed length).
    """

    def __init__(self, transformer, recipe: Recipe, latents: dict, prompts: dict, styles: list[str], pack, mu: float):
        self.transformer, self.recipe, self.latents = transformer.train(), recipe, latents
        self.prompts, self.styles, self.pack, self.mu = prompts, styles, pack, mu
        self.device = next(transformer.parameters()).device  # latents and noise stay on the CPU, batches move
        self.ema = copy.deepcopy(transformer).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(transformer.parameters(), lr=recipe.lr, betas=(0.9, 0.99),
                                           weight_decay=0.01)

    def packed(self, where: list[tuple]) -> torch.Tensor:
        """(B, N, 4C) packed latents of (kind, clip, frame) triples."""
        frames = torch.stack([self.latents[kind][clip, frame] for kind, clip, frame in where]).float()
        batch, channels, height, width = frames.shape
        return self.pack(frames, batch, channels, height, width).to(self.device)

    def step(self, step: int) -> float:
        recipe = self.recipe
        rng = np.random.default_rng(step_seed(recipe.seed, "transformer", step))
        torch_rng = torch.Generator().manual_seed(step_seed(recipe.seed, "noise", step))
        kind = str(rng.choice(list(KINDS), p=list(KINDS.values())))
        examples = [draw_example(rng, kind, recipe, self.styles) for _ in range(recipe.batch)]
        x0 = self.packed([(e.target[0], e.clip, e.target[1]) for e in examples])
        conditions = [self.packed([(e.conditions[i][0], e.clip, e.conditions[i][1]) for e in examples])
                      for i in range(len(examples[0].conditions))]
        noise = torch.randn(x0.shape, generator=torch_rng).to(self.device)  # drawn on the CPU: any device, same noise
        sigma = flow_sigmas(torch.rand(len(examples), generator=torch_rng).clamp(1e-4, 1 - 1e-4), self.mu).to(
            self.device)
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        embeds, mask = self.prompt_batch(rng, examples)
        height, width = (s // 2 for s in self.latents["styled"].shape[-2:])
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(recipe.lr, step, recipe.transformer_steps)
        velocity = self.transformer(hidden_states=torch.cat([noisy, *conditions], dim=1), timestep=sigma,
                                    encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                                    img_shapes=[[(1, height, width)] * (1 + len(conditions))] * len(examples),
                                    return_dict=False)[0][:, :x0.shape[1]]
        loss = F.mse_loss(velocity, noise - x0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.transformer.parameters(), 1.0)
        self.optimizer.step()
        decay = min(recipe.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for kept, live in zip(self.ema.parameters(), self.transformer.parameters()):
                kept.lerp_(live, 1 - decay)
        return loss.item()

    def prompt_batch(self, rng: np.random.Generator, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) prompt embeddings and (B, L) mask, each drawn from its prompt's pool, padded as the pipeline
        pads a batch of prompts."""
        chosen = []
        for example in examples:
            embeds, mask = self.prompts[(example.prompt, len(example.conditions))]
            pick = int(rng.integers(len(embeds)))
            chosen.append((embeds[pick], mask[pick]))
        longest = max(e.shape[0] for e, _ in chosen)
        embeds = torch.stack([F.pad(e, (0, 0, 0, longest - e.shape[0])) for e, _ in chosen]).float()
        mask = torch.stack([F.pad(m, (0, longest - m.shape[0])) for _, m in chosen])
        return embeds.to(self.device), mask.to(self.device)

    def state(self) -> dict:
        return {"transformer": self.transformer.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.transformer.load_state_dict(state["transformer"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
