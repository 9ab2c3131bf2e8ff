"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds the check): the two passes
of true CFG, handed to whoever computes them."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from qvedit.models.modifications import Modification


class CFGPasses:
    """Hands the transformer's "cond" and "uncond" passes of each step to ``run_pass``.

    The pipeline calls the transformer twice per step, inside ``transformer.cache_context("cond")``
    and then ``cache_context("uncond")``. With this installed, each such call becomes
    ``run_pass(name, forward, hidden_states, *args, **kwargs)``, which returns the (B, S, C_out)
    prediction; calls outside the two contexts run unchanged. ``out_features`` and ``dtype`` give the
    prediction's last dimension and dtype, for a pass that is computed elsewhere. ``change`` (a
    ``qvedit.models.modifications.Modification``) records the two instance attributes set, so undoing it takes them
    away.
    """

    def __init__(self, transformer: torch.nn.Module, run_pass: Callable, change: Modification):
        self.context: Optional[str] = None
        self.run_pass = run_pass
        self.forward = transformer.forward
        self.cache_context = transformer.cache_context
        config = transformer.config
        self.out_features = config.patch_size ** 2 * (config.out_channels or config.in_channels)
        self.dtype = transformer.dtype  # the prediction's dtype: proj_out's
        change.set(transformer, "cache_context", self.named_pass)
        change.set(transformer, "forward", self.split_forward)

    @contextlib.contextmanager
    def named_pass(self, name: str, **kwargs):
        self.context = name
        try:
            with self.cache_context(name, **kwargs):
                yield
        finally:
            self.context = None

    def split_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.context not in ("cond", "uncond"):
            return self.forward(hidden_states, *args, **kwargs)
        prediction = self.run_pass(self.context, self._prediction, hidden_states, *args, **kwargs)
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=prediction)
        return (prediction,)

    def _prediction(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The transformer's own (B, S, C_out) prediction for this pass."""
        output = self.forward(hidden_states, *args, **kwargs)
        return output[0] if isinstance(output, tuple) else output.sample

    def placeholder(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """An empty tensor shaped like this pass's prediction, to be filled by another process."""
        return hidden_states.new_empty((*hidden_states.shape[:2], self.out_features), dtype=self.dtype)
