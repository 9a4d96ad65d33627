"""Model FLOPs of a training step and the MFU they imply.

The count is the usual dense-matmul estimate, from the model's own shape: a linear layer costs 2 x parameters FLOPs
per token forward; the connector's forward is measured once with torch's FLOP counter (`describe`). Backward costs
one forward for the gradient with respect to the inputs (needed wherever a trained part lies upstream) and one more
for the weight gradient (only where the weights train), so a part costs 3x forward when it trains, 2x when gradients
only pass through it (the frozen LM of stage 1, whose input gradient reaches the connector), 1x when nothing
upstream trains (the frozen tower), and 0 when its features are cached. Attention scores are left out (small at
LLaVA's lengths next to the 7B projections), as nanoGPT and litgpt leave them out of MFU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .zero import full_dim, full_numel

# Dense bf16 peak FLOP/s per device (vendor data sheets), for MFU when the config gives none.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12,
              "RTX 4090": 165e12, "V100": 125e12}


def device_peak_flops(device: torch.device, given_tflops: float | None) -> float | None:
    if given_tflops:
        return given_tflops * 1e12
    if device.type != "cuda":
        return None  # a CPU's peak depends on its cores, clock and vector units: give `peak_tflops` to see MFU
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def _linear_params(module: torch.nn.Module, skip: tuple[torch.nn.Module, ...] = ()) -> int:
    skipped = {id(p) for m in skip for p in m.parameters()}
    return sum(full_numel(p) for p in module.parameters() if full_dim(p) >= 2 and id(p) not in skipped)


@dataclass
class FlopModel:
    """Forward FLOPs per token (LM body), per supervised token (LM head), per image (tower, connector), and the
    backward factor of each part for this stage."""

    llm_per_token: float
    head_per_token: float
    vision_per_image: float
    connector_per_image: float
    llm_factor: int
    connector_factor: int
    vision_factor: int

    @classmethod
    def for_model(cls, model, connector_flops: float, cached: bool) -> FlopModel:
        llm = model.llm
        embed, head = llm.get_input_embeddings(), llm.get_output_embeddings()
        llm_trains = any(p.requires_grad for p in llm.parameters())
        vision_trains = any(p.requires_grad for p in model.vision.parameters())
        connector_trains = any(p.requires_grad for p in model.connector.parameters())
        patches = model.connector.num_patches + 1  # the tower also runs its CLS token
        return cls(llm_per_token=2 * _linear_params(llm, (embed, head)), head_per_token=2 * _linear_params(head),
                   vision_per_image=0.0 if cached else 2 * _linear_params(model.vision) * patches,
                   connector_per_image=float(connector_flops),
                   llm_factor=3 if llm_trains else 2 if (connector_trains or vision_trains) else 1,
                   connector_factor=3 if connector_trains else 2 if vision_trains else 1,
                   vision_factor=3 if vision_trains else 1)

    def step(self, tokens: int, supervised: int, images: int) -> float:
        """Training FLOPs of one optimizer step: `tokens` LM positions (text and visual), `supervised` labelled ones."""
        return (self.llm_factor * (self.llm_per_token * tokens + self.head_per_token * supervised)
                + images * (self.connector_factor * self.connector_per_image + self.vision_factor * self.vision_per_image))
