"""The layers the architectures compose: linear, norms, activations, rotary positions, causal,
paged and encoder attention, pooling. Each is a plain function over numpy arrays with the
compiled kernel behind it; they import kernels, weights and the platform, never an architecture."""
