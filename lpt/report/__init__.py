"""Reports of runs (``lpt-report``): summary tables (Markdown, CSV) and figures (PNG) from HDF5 run logs."""

from lpt.report.plots import (convergence_figure, plot_convergence, plot_curves, plot_residuals, plot_scaling,
                              residuals_figure)
from lpt.report.summary import (COLUMNS, RunSummary, differing_keys, finite_mean, flatten, labels_from_configs,
                                last_finite, markdown_table, override_value, summarize, time_per_step, unique_labels,
                                write_csv)

__all__ = ["COLUMNS", "RunSummary", "convergence_figure", "differing_keys", "finite_mean", "flatten",
           "labels_from_configs", "last_finite", "markdown_table", "override_value", "plot_convergence",
           "plot_curves", "plot_residuals", "plot_scaling", "residuals_figure", "summarize", "time_per_step",
           "unique_labels", "write_csv"]
