"""Reports of runs (``lpt-report``): summary tables (Markdown, CSV) and figures (PNG) from HDF5 run logs."""

from lpt.report.plots import plot_curves, plot_residuals, plot_scaling
from lpt.report.summary import (COLUMNS, RunSummary, finite_mean, last_finite, markdown_table, summarize,
                                time_per_step, unique_labels, write_csv)

__all__ = ["COLUMNS", "RunSummary", "finite_mean", "last_finite", "markdown_table", "plot_curves", "plot_residuals",
           "plot_scaling", "summarize", "time_per_step", "unique_labels", "write_csv"]
