"""Speculative decoding's runner side: proposers (n-gram lookup, a draft model) and the
rejection sampler that keeps the target's output exactly what it would have been."""
