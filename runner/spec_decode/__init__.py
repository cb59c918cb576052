"""Speculative decoding's runner side: the Speculator (the runner's one seam: lookahead rule,
proposing, verifying), its proposers (n-gram lookup, a draft model) and the rejection sampler
that keeps the target's output exactly what it would have been."""
