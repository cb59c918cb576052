"""POST /v1/rerank and /rerank: Jina's and Cohere's rerank API."""
