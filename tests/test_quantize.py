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


WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def _packed_under(engine: str, model: nn.Module) -> nn.Module:
    """``model``'s linear layers quantized as :func:`quantize_int8` does, by torch directly under ``engine``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                mapping={nn.Linear: quantize._full_range_linear()})
    finally:
        torch.backends.quantized.engine = before


@pytest.mark.skipif(not {"onednn", "x86"} <= set(torch.backends.quantized.supported_engines),
                    reason="needs PyTorch's onednn and x86 quantized engines (x86 builds)")
def test_the_engine_packs_the_weights_and_the_global_engine_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    x = torch.randn(32, 64) * 3 + 1
    outputs = {}
    for engine in ("onednn", "x86"):
        before = torch.backends.quantized.engine
        int8 = quantize_int8(model, activations="full", engine=engine)
        assert torch.backends.quantized.engine == before  # the process's engine is left as it was
        with torch.no_grad():
            outputs[engine] = int8(x)
            reference = _packed_under(engine, model)(x)
        torch.testing.assert_close(outputs[engine], reference, atol=0, rtol=0)  # that engine's kernels, exactly
    # the two engines round differently: the same arithmetic, not the same numbers
    assert not torch.equal(outputs["onednn"], outputs["x86"])
    torch.testing.assert_close(outputs["onednn"], outputs["x86"], atol=0.05, rtol=0)


AVX_VNNI_ONLY = "processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n"


def test_auto_engine_is_onednn_only_where_the_cpu_has_amx_int8_or_avx512_vnni(monkeypatch):
    from sma.quantize import int8_engine

    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines",
                        property(lambda self: ["qnnpack", "onednn", "x86", "fbgemm"]))
    assert int8_engine("auto", WITH_AMX) == "onednn"
    assert int8_engine("auto", WITH_VNNI) == "onednn"  # AVX512-VNNI without AMX (an AMD EPYC)
    # AVX-VNNI (not measured), AVX2 alone, unreadable flags: PyTorch's default
    for cpuinfo in (AVX_VNNI_ONLY, AVX2_ONLY, ""):
        assert int8_engine("auto", cpuinfo) == torch.backends.quantized.engine
    assert int8_engine("fbgemm", WITH_AMX) == "fbgemm"
    with pytest.raises(ValueError, match="bench.int8_engine: 'qnnpack' is not one of"):
        int8_engine("qnnpack")
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["qnnpack"]))
    assert int8_engine("auto", WITH_AMX) == torch.backends.quantized.engine  # a build without onednn
    with pytest.raises(ValueError, match="no 'onednn' quantized engine \\(it has qnnpack\\)"):
        int8_engine("onednn")


def test_an_engine_the_build_lacks_fails_in_preflight(monkeypatch):
    from sma.config import BenchConfig, RunConfig
    from sma.preflight import PreflightError, check_int8_engine

    assert BenchConfig().int8_engine == "auto"
    with pytest.raises(ValueError, match="bench.int8_engine"):
        BenchConfig(int8_engine="amx")
    cfg = RunConfig(bench=BenchConfig(int8=True, int8_engine="onednn"))
    check_int8_engine(cfg, int8=True)
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["qnnpack"]))
    with pytest.raises(PreflightError, match="^bench.int8_engine: this PyTorch build has no 'onednn'"):
        check_int8_engine(cfg, int8=True)
    check_int8_engine(cfg, int8=False)  # no PyTorch int8 layers made: nothing to check
