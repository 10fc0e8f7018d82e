"""The input range of the int8 linear layers: worked out by hand from the layer's own int8 weights, and chosen
from the CPU's flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sma import quantize
from sma.quantize import activation_range, cpu_has_vnni, quantize_int8

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
WITH_VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"


def _by_hand(x: torch.Tensor, layer: nn.Module, levels: int) -> torch.Tensor:
    """Affine uint8 quantization of ``x`` over ``[min(x, 0), max(x, 0)]`` in ``levels`` steps, times the
    layer's dequantized int8 weights, plus its bias."""
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / (levels - 1)
    zero = round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels - 1)
    return (q - zero) * scale @ layer.weight().dequantize().T + layer.bias()


@pytest.mark.parametrize(("setting", "levels"), [("full", 256), ("reduced", 128)])
def test_int8_layer_quantizes_its_input_to_8_or_7_bits(monkeypatch, setting, levels):
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda cpuinfo=None: True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16))
    x = torch.randn(8, 64) * 3 + 1
    layer = quantize_int8(model, activations=setting)[0]
    with torch.no_grad():
        out = layer(x)
    torch.testing.assert_close(out, _by_hand(x, layer, levels), atol=1e-4, rtol=1e-4)
    other = _by_hand(x, layer, 128 if levels == 256 else 256)
    assert (out - other).abs().max() > 1e-2  # the other range gives other numbers
    if setting == "full":  # half the rounding step: closer to the float layer
        exact = model(x).detach()
        assert (out - exact).pow(2).mean() < (other - exact).pow(2).mean()


def test_auto_range_is_full_only_where_the_cpu_has_vnni(monkeypatch):
    assert not cpu_has_vnni(AVX2_ONLY) and cpu_has_vnni(WITH_VNNI)
    assert cpu_has_vnni("flags\t\t: avx2 avx_vnni\n") and cpu_has_vnni("flags\t\t: amx_int8 avx2\n")
    assert not cpu_has_vnni("model name\t: avx512_vnni in a name is no flag\n")
    for has, expected in ((True, "full"), (False, "reduced")):
        monkeypatch.setattr(quantize, "cpu_has_vnni", lambda cpuinfo=None, has=has: has)
        assert activation_range("auto") == expected
        assert activation_range("reduced") == "reduced"
    with pytest.warns(UserWarning, match="without VNNI"):
        assert activation_range("full") == "full"
    with pytest.raises(ValueError, match="bench.int8_activations: 'half'"):
        activation_range("half")


def test_config_rejects_an_unknown_range():
    from sma.config import BenchConfig

    assert BenchConfig().int8_activations == "auto"
    with pytest.raises(ValueError, match="bench.int8_activations"):
        BenchConfig(int8_activations="8bit")
