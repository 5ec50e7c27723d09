"""The lecture's experiments (issue 6) as library code: each runs on any model and data, the recipe on real ones."""

from .common import cpu_threads, markdown_table, mean_ci, paired
from .lpft_shift import (
    LpftShiftArguments,
    lpft_model_loader,
    lpft_shift_table,
    plot_lpft_shift,
    run_lpft_shift,
)
from .pretrained_vs_scratch import (
    SizesArguments,
    plot_sizes,
    run_pretrained_vs_scratch,
    scratch_like,
    sizes_table,
)
from .surgical_shift import SurgicalArguments, plot_surgical, run_surgical_shift, surgical_table
from .tiny_k import TinyKArguments, plot_tiny_k, run_tiny_k, tiny_k_table

__all__ = [
    "LpftShiftArguments",
    "SizesArguments",
    "SurgicalArguments",
    "TinyKArguments",
    "cpu_threads",
    "lpft_model_loader",
    "lpft_shift_table",
    "markdown_table",
    "mean_ci",
    "paired",
    "plot_lpft_shift",
    "plot_sizes",
    "plot_surgical",
    "plot_tiny_k",
    "run_lpft_shift",
    "run_pretrained_vs_scratch",
    "run_surgical_shift",
    "run_tiny_k",
    "scratch_like",
    "sizes_table",
    "surgical_table",
    "tiny_k_table",
]
