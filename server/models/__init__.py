"""Several models behind one endpoint: where they come from (catalog.py), which are loaded and
for how long (pool.py), each loaded model's serving state (context.py, with what its tokenizer
configuration gives: tokenizer_info.py), and the endpoints that list, load and unload them
(routes.py, protocol.py)."""
