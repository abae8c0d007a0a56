"""The benchmark: symbn against naive NumPy, PyTorch and the memory bandwidth."""
