"""Gradual pruning schedules: how many steps and which sparsity after each, from one *gentleness* knob.

Mapping (documented in the README): with gentleness ``g`` in [0, 1] and ``max_steps`` K,

* number of steps ``k = 1 + round(g * (K - 1))`` -- ``g = 0`` is one-shot pruning;
* sparsity after step ``t`` (1-based) ``s_t = s_0 + (s_f - s_0) * (1 - (1 - t / k) ** p)`` with exponent
  ``p = 1 + 2 g`` -- ``g = 1`` is the cubic schedule of Zhu & Gupta (2017): big steps first, while the
  network still has redundancy, then smaller ones; smaller ``g`` is closer to linear.

The last step always lands exactly on the target.
"""

from __future__ import annotations


def num_steps(gentleness: float, *, max_steps: int) -> int:
    if not 0.0 <= gentleness <= 1.0:
        raise ValueError(f"gentleness must be in [0, 1], got {gentleness}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return 1 + round(gentleness * (max_steps - 1))


def sparsity_schedule(target: float, gentleness: float, *, max_steps: int = 4, start: float = 0.0) -> list[float]:
    """Sparsity to reach after each pruning step, ending at ``target``."""
    if not 0.0 <= start <= target < 1.0:
        raise ValueError(f"need 0 <= start ({start}) <= target ({target}) < 1")
    k = num_steps(gentleness, max_steps=max_steps)
    p = 1.0 + 2.0 * gentleness
    steps = [start + (target - start) * (1.0 - (1.0 - t / k) ** p) for t in range(1, k + 1)]
    steps[-1] = target
    return steps
