"""An error heatmap over output positions, saved as a PNG beside a report.

matplotlib is optional (the ``plot`` extra). Without it no picture is drawn,
and a note is logged once per process.
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import Optional

import torch

from difftest._atomic import write_atomic
from difftest.errors import WriteError
from difftest.runner import CaseContext, Outcome

__all__ = ["heatmap_path", "error_map", "render_heatmap"]

logger = logging.getLogger(__name__)

# Few enough output channels to draw one panel each; more are summed into one.
MAX_PANELS = 4

# Up to this many output positions per panel, mismatched ones are marked.
MAX_MARKED_POSITIONS = 1024

_missing_logged = False


def heatmap_path(report_path: str) -> str:
    """Return the picture's path for a report: the same folder and stem, with .png."""
    return os.path.splitext(report_path)[0] + ".png"


def error_map(outcome: Outcome, context: CaseContext) -> Optional[tuple[torch.Tensor, torch.Tensor, str]]:
    """Return (values, mismatch mask, label) per output channel and position, or None without a comparison.

    For an exact case the values count mismatched batch items, because any
    difference is a bug there. Otherwise they are the greatest error over
    the batch divided by the bound, so values above 1 are mismatches. Both
    tensors have shape (channels, height, width).
    """
    comparison = outcome.comparison
    if outcome.output is None or comparison is None or comparison.mismatch_mask is None or outcome.bound is None:
        return None
    mask = comparison.mismatch_mask
    actual = outcome.output.detach().to("cpu", torch.float64)
    truth = context.truth
    if actual.shape != truth.shape:
        return None
    if mask.dim() == 3:
        mask, actual, truth = mask.unsqueeze(0), actual.unsqueeze(0), truth.unsqueeze(0)
        limit = outcome.bound.values.unsqueeze(0)
    else:
        limit = outcome.bound.values
    if outcome.bound.model == "exact" or not bool((limit > 0).any()):
        return mask.sum(dim=0).to(torch.float64), mask.any(dim=0), "mismatched batch items (exact case)"
    error = (actual - truth).abs()
    ratio = torch.where(limit > 0, error / limit, torch.where(error > 0, math.inf, 0.0))
    # A NaN or infinity where the truth differs is drawn at the top of the
    # scale. One that agrees with the truth (inf - inf is NaN) is drawn at zero.
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.where(mask, math.inf, 0.0))
    finite = ratio[torch.isfinite(ratio)]
    ceiling = max(2.0, float(finite.max()) * 2 if finite.numel() else 2.0)
    ratio = ratio.clamp(max=ceiling)
    return ratio.amax(dim=0), mask.any(dim=0), "error / bound (above 1 is a mismatch)"


def render_heatmap(outcome: Outcome, context: CaseContext, path: str) -> Optional[str]:
    """Draw the error map of ``outcome`` into the PNG at ``path``; return its file name, or None if not drawn.

    The file is written whole: drawn to a temporary file in the same folder,
    then renamed. Nothing is drawn for an outcome without a value comparison
    (a shape mismatch, a crash) or when matplotlib is missing.
    """
    global _missing_logged

    mapped = error_map(outcome, context)
    if mapped is None:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        if not _missing_logged:
            logger.info("matplotlib is not installed, so reports get no error heatmap "
                        "(install difftest[plot] to draw them)")
            _missing_logged = True
        return None

    values, mask, label = mapped
    channels = values.shape[0]
    if channels > MAX_PANELS:
        values, mask = values.sum(dim=0, keepdim=True), mask.any(dim=0, keepdim=True)
        titles = [f"all {channels} channels"]
    else:
        titles = [f"channel {c}" for c in range(channels)]

    figure = Figure(figsize=(max(4.8, 3.2 * len(titles) + 0.8), 3.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(titles), squeeze=False)[0]
    top = float(values.max()) if values.numel() else 1.0
    for panel, (axis, title) in enumerate(zip(axes, titles)):
        image = axis.imshow(values[panel].numpy(), cmap="magma", vmin=0.0, vmax=max(top, 1.0),
                            interpolation="nearest")
        if values.shape[-2] * values.shape[-1] <= MAX_MARKED_POSITIONS:
            rows, columns = torch.nonzero(mask[panel], as_tuple=True)
            axis.scatter(columns.numpy(), rows.numpy(), marker="x", s=18, color="cyan", linewidths=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("output column (W)", fontsize=8)
        axis.set_ylabel("output row (H)", fontsize=8)
        # Positions are whole numbers: on a 2x2 output the default ticks fall at -0.5, -0.25, ...
        # min_n_ticks=1 keeps a single tick at 0 on an axis of length 1.
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.suptitle(f"{outcome.implementation}\n{label}", fontsize=9)
    figure.tight_layout()

    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    try:
        write_atomic(path, image.getvalue())
    except WriteError as error:
        # The report matters more than its picture, and writing the report
        # into the same folder reports the folder's problem.
        logger.warning("cannot save the error heatmap: %s", error)
        return None
    return os.path.basename(path)
