"""Sphinx configuration for rabbit_ha_driver."""

project = "rabbit_ha_driver"
copyright = "rabbit_ha_driver authors"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "oslo_config.sphinxext",
    "oslo_config.sphinxconfiggen",
]
# A commented sample of every option, generated at build time.
config_generator_config_file = "../etc/oslo-config-generator/rabbit_ha_driver.conf"
sample_config_basename = "_static/rabbit_ha_driver"
html_static_path = ["_static"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
# generated/ holds tables included by other pages, not pages of their own.
exclude_patterns = ["_build", "generated"]
html_theme = "alabaster"
