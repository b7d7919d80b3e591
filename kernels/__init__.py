"""Triton kernels for fusedrnn (installed as fusedrnn.kernels)."""
