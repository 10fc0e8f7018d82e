import pytest
import torch

from sma.distill import DistillTexts, distill_epochs, kd_loss, teacher_embeddings
from sma.model import BiEncoder
from sma.schedule import num_steps, sparsity_schedule


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("g", [0.0, 0.25, 0.5, 1.0])
def test_schedule_is_increasing_and_ends_on_target(target, g):
    steps = sparsity_schedule(target, g, max_steps=4)
    assert len(steps) == num_steps(g, max_steps=4)
    assert steps[-1] == target
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    assert all(0 < s <= target for s in steps)


def test_schedule_by_hand():
    assert sparsity_schedule(0.5, 0.0) == [0.5]  # one shot
    # g = 1, 4 steps, cubic: s_t = 0.8 * (1 - (1 - t/4)^3)
    expected = [0.8 * (1 - (1 - t / 4) ** 3) for t in (1, 2, 3)] + [0.8]
    assert sparsity_schedule(0.8, 1.0, max_steps=4) == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.8 * 37 / 64)
    with pytest.raises(ValueError):
        sparsity_schedule(0.5, 1.5)


def test_kd_loss_is_zero_when_student_equals_teacher():
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert kd_loss(t.clone(), t, temperature=0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(torch.nn.functional.normalize(torch.randn(6, 8), dim=-1), t, temperature=0.05).item() > 0.01


def test_kd_mse_part_by_hand():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(2.0)  # |s - t|^2, one row: no KL term


def test_distillation_moves_student_towards_teacher(tiny_model_dir):
    from sma.prune import apply_plan, first_n_scores, plan_for_sparsity

    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = [f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate", "cone", "jet", "nozzle", "shell")]
    # A random tiny BERT maps every text to almost the same direction; distinct targets make the test bite.
    emb = torch.nn.functional.normalize(torch.randn(len(texts), 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    data = DistillTexts(texts=tuple(texts), teacher=emb)
    apply_plan(student, plan_for_sparsity(student.encoder, first_n_scores(student.encoder), 0.5))

    def gap() -> float:
        with torch.no_grad():
            return kd_loss(teacher_embeddings(student, texts, max_length=16, show_progress=False), emb,
                           temperature=0.05).item()

    before = gap()
    losses = distill_epochs(student, data, epochs=30, alpha=1.0, temperature=0.05, lr=3e-3, batch_size=4,
                            max_length=16, seed=0, show_progress=False, lr_schedule="constant", warmup_ratio=0.0)
    assert len(losses) == 30
    assert gap() < 0.5 * before


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_distillation_learning_rate_warms_up_then_follows_the_schedule(tiny_model_dir, monkeypatch, schedule):
    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = tuple(f"text {i}" for i in range(8))
    data = DistillTexts(texts=texts, teacher=torch.nn.functional.normalize(torch.randn(8, 32), dim=-1))
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    # 8 texts / batch 4 = 2 steps per epoch, 5 epochs = 10 steps, warmup int(0.2 * 10) = 2 steps
    distill_epochs(student, data, epochs=5, alpha=1.0, temperature=0.05, lr=1e-3, batch_size=4, max_length=8,
                   seed=0, show_progress=False, lr_schedule=schedule, warmup_ratio=0.2)
    warm = [0.0, 0.5]
    rest = [(10 - i) / 8 for i in range(2, 10)] if schedule == "linear" else [1.0] * 8
    assert seen == pytest.approx([1e-3 * f for f in warm + rest])
    with pytest.raises(ValueError, match="lr_schedule"):
        distill_epochs(student, data, epochs=1, alpha=1.0, temperature=0.05, lr=1e-3, batch_size=4, max_length=8,
                       seed=0, show_progress=False, lr_schedule="cosine")


def test_pseudo_queries_are_seeded_spans_of_their_documents():
    from sma.distill import pseudo_queries

    docs = [" ".join(f"w{i}" for i in range(30)), "short doc"]
    spans = pseudo_queries(docs, per_doc=3, words=(4, 6), seed=7)
    assert len(spans) == 6
    assert spans == pseudo_queries(docs, per_doc=3, words=(4, 6), seed=7)
    assert spans != pseudo_queries(docs, per_doc=3, words=(4, 6), seed=8)
    for span in spans[:3]:  # consecutive words of the first document, 4 to 6 of them
        words = span.split()
        assert 4 <= len(words) <= 6
        first = int(words[0][1:])
        assert words == [f"w{i}" for i in range(first, first + len(words))]
    assert spans[3:] == ["short doc"] * 3  # shorter than the minimum span: the whole document
    assert pseudo_queries(docs, per_doc=0, words=(4, 6), seed=7) == []
