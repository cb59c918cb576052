"""The web page at /ui: plain HTML, CSS and JavaScript modules (`static/`) and the small JSON
endpoints they read (`routes.py`)."""
