"""POST /v1/messages (and count_tokens): Anthropic's Messages API over the chat path."""
