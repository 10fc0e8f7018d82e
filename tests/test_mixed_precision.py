"""``distill.precision=bfloat16``: the student's passes run in bfloat16 autocast; losses, weights, gradients and
evaluation stay float32, and the loss is the float32 loss up to bfloat16 rounding."""

import pytest
import torch

from sma.cli import make_parser
from sma.config import ConfigError, DistillConfig
from sma.config.options import run_config
from sma.distill import DistillTexts, _batch_loss, distill_epochs, kd_loss
from sma.model import BiEncoder, autocast, resolve_precision


def _texts(n: int = 8) -> DistillTexts:
    texts = tuple(f"wing lift {w} flow over a plate" for w in range(n))
    emb = torch.nn.functional.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    return DistillTexts(texts=texts, teacher=emb)


def _cfg(**kw) -> DistillConfig:
    return DistillConfig(**{"batch_size": 4, "max_length": 16, "learning_rate": 1e-3, "neighbor_share": 0.0, **kw})


def _linear_dtypes(model: BiEncoder) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    return seen, hooks


@pytest.mark.parametrize("precision, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_the_students_matrix_products_run_in_the_precision_and_the_loss_in_float32(tiny_model_dir, precision,
                                                                                   expected):
    import random

    student = BiEncoder.from_pretrained(str(tiny_model_dir)).train()
    seen, hooks = _linear_dtypes(student)
    try:
        loss = _batch_loss(student, _texts(), [0, 1, 2, 3], _cfg(precision=precision), task=None,
                           rng=random.Random(0), teacher=None, task_temperature=0.05)
    finally:
        for h in hooks:
            h.remove()
    assert seen and set(seen) == {expected}
    assert loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bfloat16_loss_is_the_float32_loss_up_to_rounding(tiny_model_dir):
    import random

    student = BiEncoder.from_pretrained(str(tiny_model_dir)).eval()  # no dropout: the same function twice
    data = _texts()
    idx = [0, 1, 2, 3, 4, 5, 6, 7]
    losses = {p: _batch_loss(student, data, idx, _cfg(precision=p, batch_size=8), task=None, rng=random.Random(0),
                             teacher=None, task_temperature=0.05).item() for p in ("float32", "bfloat16")}
    with torch.no_grad():  # the float32 loss worked out directly from the float32 embeddings
        emb = student(**student.tokenizer(list(data.texts), padding=True, truncation=True, max_length=16,
                                          return_tensors="pt"))
    assert losses["float32"] == pytest.approx(kd_loss(emb, data.teacher, temperature=0.05).item(), rel=1e-5)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)
    assert losses["bfloat16"] != losses["float32"]  # it did run in bfloat16


def test_evaluation_during_bfloat16_distillation_stays_float32(tiny_model_dir):
    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    seen, hooks = _linear_dtypes(student)
    at_epoch_end: list[set] = []

    def on_epoch(_epoch: int, _loss: float) -> None:  # what the pipeline's per-epoch dev evaluation does
        seen.clear()
        student.encode(["a query"], kind="query")
        at_epoch_end.append(set(seen))
        seen.clear()

    try:
        distill_epochs(student, _texts(), _cfg(precision="bfloat16"), epochs=2, seed=0, on_epoch=on_epoch,
                       show_progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert at_epoch_end == [{torch.float32}, {torch.float32}]
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_autocast_is_off_for_float32():
    with autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu")


def test_precision_is_checked_before_any_work():
    cfg = run_config(make_parser().parse_args(["run", "--set", "distill.precision=bfloat16"]))
    assert cfg.distill.precision == "bfloat16"
    with pytest.raises(ConfigError, match=r"^distill\.precision: must be one of float32, bfloat16, auto, got 'float16'$"):
        run_config(make_parser().parse_args(["run", "--set", "distill.precision=float16"]))


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_precision_runs_bfloat16_only_where_the_device_has_it_natively(tiny_model_dir, monkeypatch, native,
                                                                            expected):
    import random

    import sma.model

    monkeypatch.setattr(sma.model, "native_bfloat16", lambda device: native)
    assert resolve_precision("auto", torch.device("cpu")) == ("bfloat16" if native else "float32")
    assert resolve_precision("float32", torch.device("cpu")) == "float32"  # explicit names are kept
    assert resolve_precision("bfloat16", torch.device("cpu")) == "bfloat16"
    student = BiEncoder.from_pretrained(str(tiny_model_dir)).train()
    seen, hooks = _linear_dtypes(student)
    try:
        _batch_loss(student, _texts(), [0, 1, 2, 3], _cfg(precision="auto"), task=None, rng=random.Random(0),
                    teacher=None, task_temperature=0.05)
    finally:
        for h in hooks:
            h.remove()
    assert seen and set(seen) == {expected}


def test_fast_sets_the_faster_recipe_and_explicit_settings_win():
    parse = make_parser().parse_args
    cfg = run_config(parse(["run", "--fast"]))
    assert (cfg.prune.gentleness, cfg.distill.precision, cfg.distill.freeze_word_embeddings) == (0.0, "auto", True)
    default = run_config(parse(["run"]))
    assert (default.prune.gentleness, default.distill.precision, default.distill.freeze_word_embeddings) == \
        (0.5, "float32", False)
    cfg = run_config(parse(["run", "--fast", "--gentleness", "0.25", "--set", "distill.precision=float32"]))
    assert (cfg.prune.gentleness, cfg.distill.precision, cfg.distill.freeze_word_embeddings) == (0.25, "float32", True)
    with pytest.raises(SystemExit):  # a recipe of sma run only: tune searches gentleness
        parse(["tune", "--fast"])
