"""Sphinx configuration for rabbit_ha_driver."""

project = "rabbit_ha_driver"
copyright = "rabbit_ha_driver authors"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "oslo_config.sphinxext",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
