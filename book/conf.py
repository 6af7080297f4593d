"""Sphinx configuration of the course website: `make book` (python -m indistill_lab.viz.static_site) stages the
stored notebooks with their figures and sliders and builds them with this file; nothing is executed."""
project = "indistill_lab"
author = "indistill_lab"
extensions = ["myst_nb"]

# The stored notebooks are rendered as they are: never executed, no widget manager from a CDN.
nb_execution_mode = "off"
nb_ipywidgets_js = {}
# Markdown outputs (the notebooks' tables from report.markdown_table) are parsed as MyST, which has pipe tables.
nb_render_markdown_format = "myst"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "indistill_lab: distillation and pruning, notebook by notebook"
# A body as wide as a notebook's output area (900 px figures, the width of their stored PNGs).
html_theme_options = {"page_width": "1260px", "sidebar_width": "230px", "body_max_width": "960px",
                      "show_relbars": True}
html_static_path = ["_static"]
# plotly.min.js (from the plotly package) and MathJax 3's self-contained tex-svg.js (from the
# sphinx-mathjax-offline package) are copied into _static by the build: the site fetches nothing from the network.
html_js_files = ["plotly.min.js", "indistill.js"]
html_css_files = ["indistill.css"]
mathjax_path = "mathjax/tex-svg.js"
html_copy_source = False
html_show_sourcelink = False
