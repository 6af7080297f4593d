"""Plotly figures and ipywidgets controls the notebooks compose, one module per topic."""
