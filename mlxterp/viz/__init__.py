"""Seeing features: HTML feature pages, the feature dashboard and its server, PNG plots."""

from ..sae.entry_points import register_feature_tools
from .dashboard import DashboardServer, check_port, serve_dashboard, write_dashboard
from .html import VizError, render_feature_page, write_feature_page
from .launch import launch_dashboard, visualize_feature
from .lens import plot_logit_lens, render_logit_lens_page, write_logit_lens_page
from .neuronpedia import export_neuronpedia, neuronpedia_batches, write_neuronpedia
from .plots import PlotDependencyError, plot_density_histogram, plot_feature_strengths, plot_training_curves

register_feature_tools(visualize_feature=visualize_feature, launch_dashboard=launch_dashboard,
                       export_neuronpedia=export_neuronpedia)

__all__ = [
    "DashboardServer",
    "PlotDependencyError",
    "VizError",
    "check_port",
    "export_neuronpedia",
    "launch_dashboard",
    "neuronpedia_batches",
    "plot_density_histogram",
    "plot_feature_strengths",
    "plot_logit_lens",
    "plot_training_curves",
    "render_feature_page",
    "render_logit_lens_page",
    "serve_dashboard",
    "visualize_feature",
    "write_dashboard",
    "write_feature_page",
    "write_logit_lens_page",
    "write_neuronpedia",
]
