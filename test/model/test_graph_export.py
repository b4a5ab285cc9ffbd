"""The model traces into one static graph per sensor subset (`torch.export`), the basis of the ONNX export: no
pointer-keyed caches, no data-dependent Python control flow once the host-side `active` ids fix the subset."""

from __future__ import annotations

import pytest
import torch
from fixtures.model import random_batch, randomize_lora, tiny_config

from mlesam_core.model import build_model


class FixedSubset(torch.nn.Module):
    """What an exporter traces: the model's forward for one sensor subset (`active`), returning the logits."""

    def __init__(self, model: torch.nn.Module, active: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.active = active

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.model(images, present, active=self.active).logits


@pytest.mark.parametrize("active", [(0, 1, 2, 3), (0,)], ids=["full_set", "rgb_only"])
@pytest.mark.parametrize("overrides", [(), ("sensor_heads.enabled=true",)], ids=["paper", "sensor_heads"])
def test_export_traces_each_subset_to_a_graph_equal_to_eager_with_nonzero_lora(active, overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(*overrides)).eval()
    randomize_lora(model)  # LoRA B = 0 would hide a graph that lost the experts
    images, present = random_batch(model.config, batch=1)
    present[:] = False
    present[0, list(active)] = True
    wrapper = FixedSubset(model, active)
    program = torch.export.export(wrapper, (images, present))
    with torch.no_grad():
        eager = wrapper(images, present)
        randomize_lora(model, seed=1)
        changed = wrapper(images, present)
        randomize_lora(model, seed=0)
    assert not torch.allclose(eager, changed)  # the experts act on this output
    torch.testing.assert_close(program.module()(images, present), eager, rtol=1e-5, atol=1e-5)
    # tracing left nothing fake behind on the module: eager still runs and gives the same result
    with torch.no_grad():
        torch.testing.assert_close(wrapper(images, present), eager, rtol=0, atol=0)
