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
                            max_length=16, seed=0, show_progress=False)
    assert len(losses) == 30
    assert gap() < 0.5 * before
