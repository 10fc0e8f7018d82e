"""PNG plots of importance: a layer x head heatmap and per-layer neuron distributions, per method."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sma.atomic import atomic_file
from sma.circuits.controls import UnitScores


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def plot_heads(scores: UnitScores, path: Path, *, circuit: Sequence[tuple[str, int, int]] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = max(len(h) for h in scores.heads)
    grid = np.full((len(scores.heads), width), np.nan)
    for layer, heads in enumerate(scores.heads):
        grid[layer, :len(heads)] = heads
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.5 * width), max(3.0, 1.4 + 0.45 * len(scores.heads))))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for kind, layer, head in circuit:
        if kind == "head":
            ax.add_patch(matplotlib.patches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(len(scores.heads)))
    ax.set_title(f"head importance\n{scores.method}" + (" (red: circuit)" if circuit else ""), fontsize=10)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def plot_neurons(scores: UnitScores, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.0 * len(scores.neurons)), 3.5))
    ax.boxplot([list(n) for n in scores.neurons], showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(scores.neurons) + 1), [str(i) for i in range(len(scores.neurons))])
    ax.set_xlabel("layer")
    ax.set_ylabel("neuron importance")
    values = sorted(abs(v) for n in scores.neurons for v in n)
    if values and values[0] > 0 and min(min(n) for n in scores.neurons) > 0:
        ax.set_yscale("log")
    elif values and values[-1] > 0:  # mixed signs / zeros: linear near 0, log beyond the typical magnitude
        ax.set_yscale("symlog", linthresh=max(values[len(values) // 2], values[-1] * 1e-6))
    ax.set_title(f"FFN neuron importance per layer\n{scores.method}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_all(scores: dict[str, UnitScores], folder: Path, *,
             circuits: dict[str, Sequence[tuple[str, int, int]]] | None = None) -> list[Path]:
    """``heads_<name>.png`` and ``neurons_<name>.png`` for every ``name -> scores`` entry."""
    out = []
    for name, s in scores.items():
        out.append(plot_heads(s, folder / f"heads_{_safe(name)}.png", circuit=(circuits or {}).get(name, ())))
        out.append(plot_neurons(s, folder / f"neurons_{_safe(name)}.png"))
    return out
