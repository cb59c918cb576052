"""POST /v1/responses (and GET, DELETE of stored ones): OpenAI's Responses API over the chat
path."""
