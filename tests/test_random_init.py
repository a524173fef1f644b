"""Layer-at-a-time initialization (models.init_layers_on) gives the weights transformers' own initialization gives:
every parameter drawn (no uninitialized memory left), norms at one, linear and expert weights at the config's
initializer_range, and the layers back where they live."""

import pytest

torch = pytest.importorskip("torch")

from roofsim.executor.check import tiny_config  # noqa: E402
from roofsim.executor.models import init_layers_on  # noqa: E402
from roofsim.executor.weights import decoder_layers  # noqa: E402


def _empty(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(float("nan"))  # what an initialization leaves undrawn shows
    return model


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_layer_at_a_time_init_draws_every_weight_as_transformers_does(family):
    config = tiny_config(family)
    torch.manual_seed(0)
    model = _empty(config)
    init_layers_on(model, "cpu")
    model.initialize_weights()
    std = config.initializer_range
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.device.type == "cpu", name
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        elif p.dim() >= 2 and p.numel() >= 1024:
            assert p.std().item() == pytest.approx(std, rel=0.15), name
    experts = [n for n, _ in model.named_parameters() if "experts" in n]
    assert bool(experts) == (family == "qwen3_moe")
    assert all(getattr(m, "_is_hf_initialized", False) for m in decoder_layers(model)[0].modules())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_layers_drawn_on_the_gpu_come_back_to_the_host():
    from roofsim.executor.models import random_model

    model = random_model(tiny_config("qwen3_moe"), "cuda", torch.bfloat16, layers_device="cpu")
    for layer in decoder_layers(model):
        for name, p in layer.named_parameters():
            assert p.device.type == "cpu" and torch.isfinite(p.float()).all(), name
    assert model.lm_head.weight.device.type == "cuda"
