"""Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags, /api/show, /api/ps,
/api/version) over the chat path and the pooling path."""
