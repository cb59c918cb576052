"""POST /v1/embeddings: OpenAI's embeddings API."""
