"""POST /v1/chat/completions: OpenAI's chat completions API over the chat path."""
