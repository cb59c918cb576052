"""The plain values every layer above the model shares: sampling parameters, prompt forms,
outputs, errors, limits and the stop-string rule. They import only the standard library and
numpy, so the runner, the core and the server can all hold them."""
