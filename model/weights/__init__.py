"""Weights in memory: the formats a matrix is stored in and how each turns back into float32."""
