"""Seeing features: HTML feature pages, the feature dashboard and its server, PNG plots."""

from .dashboard import DashboardServer, launch_dashboard, serve_dashboard, write_dashboard
from .html import VizError, render_feature_page, write_feature_page
from .plots import PlotDependencyError, plot_density_histogram, plot_feature_strengths, plot_training_curves

__all__ = [
    "DashboardServer",
    "PlotDependencyError",
    "VizError",
    "launch_dashboard",
    "plot_density_histogram",
    "plot_feature_strengths",
    "plot_training_curves",
    "render_feature_page",
    "serve_dashboard",
    "write_dashboard",
    "write_feature_page",
]
