"""The `pycni` command line."""
