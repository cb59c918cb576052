"""POST /v1/score and /score: vLLM's score API."""
