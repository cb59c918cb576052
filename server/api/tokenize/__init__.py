"""POST /tokenize and /detokenize: vLLM's tokenizer API."""
