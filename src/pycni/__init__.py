"""pycni: a Container Network Interface stack in Python."""

__version__ = "0.1.0"
