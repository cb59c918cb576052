"""The APIs, one folder each (its request models, routes, renderer and error shape); table.py
lists them."""
