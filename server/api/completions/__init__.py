"""POST /v1/completions: OpenAI's legacy completions API, with vLLM's extra fields."""
