"""What the server serves and how it is: /v1/models, /health, /version, /load, /metrics,
/tokenizer_info."""
