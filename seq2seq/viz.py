"""PNG plots: attention heatmaps and learning curves.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas rather
than through ``pyplot``: that needs no display, leaves pyplot's global figure list and the
process-wide backend alone, and frees each figure as soon as it goes out of scope.
"""

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120

# Inches per token on the heatmap axes, and the clamp that keeps very short or very long
# sentences from producing unreadably small or enormous images.
_INCHES_PER_TOKEN = 0.35
_MIN_INCHES, _MAX_INCHES = 3.0, 30.0

# Glyphs that make otherwise invisible tokens visible on an axis.
_VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\t": "⇥", "\n": "↵", "\r": "↵"})

_LOSS_KEYS = ("train_loss", "valid_loss")
_SCORE_KEYS = ("valid_bleu", "valid_chrf", "valid_rouge1", "valid_rouge2", "valid_rougeL")


def _to_matrix(weights: Any) -> np.ndarray:
    """Convert a torch tensor or array-like to a 2-D float numpy array.

    Args:
        weights: A torch tensor (any device or dtype) or anything ``np.asarray`` accepts.

    Returns:
        A float64 array.
    """
    # Duck-typed so this module does not import torch; .float() first because numpy has no
    # bfloat16, and detach/cpu because plots are made from live training tensors.
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().float().numpy()
    return np.asarray(weights, dtype=np.float64)


def _label(token: str) -> str:
    """Make a token safe and visible as a tick label.

    Args:
        token: A source or output token.

    Returns:
        The token with whitespace shown as visible glyphs, ``"∅"`` for an empty token, and
        ``$`` escaped so matplotlib does not read a pair of them as mathtext.
    """
    if not token:
        return "∅"
    return token.translate(_VISIBLE_WHITESPACE).replace("$", r"\$")


def _heatmap_size(n_src: int, n_out: int) -> tuple[float, float]:
    """Figure size in inches for a heatmap of ``n_out`` rows and ``n_src`` columns.

    Args:
        n_src: Number of source tokens (columns).
        n_out: Number of output tokens (rows).

    Returns:
        ``(width, height)``, each clamped to a readable range. The width has room for the
        colorbar, the height for the rotated source labels.
    """
    width = 2.5 + _INCHES_PER_TOKEN * n_src
    height = 2.0 + _INCHES_PER_TOKEN * n_out
    return (
        float(np.clip(width, _MIN_INCHES, _MAX_INCHES)),
        float(np.clip(height, _MIN_INCHES, _MAX_INCHES)),
    )


def _save(fig: Figure, path: Path) -> Path:
    """Render a figure to PNG, creating parent directories.

    Args:
        fig: The figure to save.
        path: Destination file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def plot_attention(
    weights: Any,
    src_tokens: list[str],
    out_tokens: list[str],
    path: Path,
    title: str | None = None,
) -> Path:
    """Draw an attention matrix as a heatmap and save it as a PNG.

    Args:
        weights: Attention weights ``[len(out_tokens), len(src_tokens)]`` as a torch tensor
            or array-like; row ``i`` is the distribution output token ``i`` placed over
            the source. The colour scale spans the values present.
        src_tokens: Source tokens, drawn along the x axis (labels rotated 90 degrees).
        out_tokens: Output tokens, drawn down the y axis.
        path: Destination PNG; missing parent directories are created.
        title: Optional figure title, drawn as plain text (no mathtext).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``weights`` is not 2-D, its shape does not match the token counts, or
            there are no tokens.
    """
    matrix = _to_matrix(weights)
    expected = (len(out_tokens), len(src_tokens))
    if matrix.shape != expected:
        raise ValueError(
            f"attention weights have shape {tuple(matrix.shape)} but the tokens need "
            f"{expected} (len(out_tokens), len(src_tokens))"
        )
    if matrix.size == 0:
        raise ValueError("cannot plot attention with no source or no output tokens")

    # Constrained rather than tight layout: it also makes room for the colorbar, so long
    # rotated labels are never clipped.
    fig = Figure(figsize=_heatmap_size(*expected[::-1]), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(src_tokens)), [_label(t) for t in src_tokens], rotation=90)
    ax.set_yticks(range(len(out_tokens)), [_label(t) for t in out_tokens])
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        # Titles often quote the sentence itself, so they get the same "$" escaping.
        ax.set_title(title.replace("$", r"\$"))
    fig.colorbar(image, ax=ax, label="attention weight")
    return _save(fig, path)


def _plot_series(ax: Axes, history: list[dict], keys: tuple[str, ...]) -> None:
    """Plot each key of ``keys`` that occurs in ``history`` as one line against the step.

    Args:
        ax: The matplotlib axes to draw on.
        history: Log entries; an entry without ``"step"`` is placed at its list index.
        keys: Metric names to look up in each entry.
    """
    for key in keys:
        points = [
            (entry.get("step", i), entry[key]) for i, entry in enumerate(history) if key in entry
        ]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        # Validation runs are sparse, so markers show where each value was measured.
        marker = "o" if key.startswith("valid") else None
        ax.plot(steps, values, marker=marker, markersize=3, label=key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_curves(history: list[dict], path: Path) -> Path:
    """Plot learning curves: losses in one panel and validation scores, if logged, in another.

    Args:
        history: Log entries such as ``{"step": 100, "train_loss": 2.3, "valid_loss": 2.1,
            "valid_bleu": 12.0}``; every key is optional per entry, so training and
            validation entries may be logged separately.
        path: Destination PNG; missing parent directories are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If no entry holds a loss or a validation score.
    """
    present = {key for entry in history for key in entry}
    panels = [keys for keys in (_LOSS_KEYS, _SCORE_KEYS) if present.intersection(keys)]
    if not panels:
        raise ValueError(
            f"history has nothing to plot; expected entries with any of "
            f"{list(_LOSS_KEYS + _SCORE_KEYS)}"
        )

    fig = Figure(figsize=(6.0 * len(panels), 4.0), dpi=DPI, layout="constrained")
    for i, keys in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        _plot_series(ax, history, keys)
        ax.set_ylabel("loss" if keys is _LOSS_KEYS else "score")
    return _save(fig, path)
