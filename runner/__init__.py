"""NativeModelRunner: flat numpy inputs, the paged KV cache, and sampling."""
