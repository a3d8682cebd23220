"""Sphinx settings of the book's website. Build it with `python book/build.py`, which lays out the
sources (the repository README as the landing page, the executed chapters, the student version of
the exercises) in book/_build/source/ and runs Sphinx with this folder as its configuration."""

project = "uvit-from-scratch"
html_title = "uvit-from-scratch"
html_favicon = "_static/favicon.svg"     # (else the browser asks for /favicon.ico)
root_doc = "index"                  # the repository README

extensions = [
    "myst_nb",                      # notebooks and Markdown (MyST) as Sphinx documents
    "sphinx-mathjax-offline",       # MathJax 3 copied into _static/mathjax: no CDN
]

# The chapters are committed executed (`python book/execute.py`); the site shows those outputs.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]   # $...$, $$...$$ and \begin{align} as in Jupyter
myst_heading_anchors = 3                              # [..](#a-heading) links, as on the code host
myst_dmath_double_inline = True                       # $$...$$ inside a paragraph is display math

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,   # the .ipynb files are not copied into the site
    "use_fullscreen_button": False,
}
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_copy_source = False            # no _sources/: the site carries the rendered pages only
html_show_sourcelink = False
html_last_updated_fmt = None        # no build date: the same sources give the same pages
html_context = {"default_mode": "light"}   # the figures are drawn on white; readers may switch
exclude_patterns = ["**.ipynb_checkpoints"]
