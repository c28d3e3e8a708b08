"""mtlrun: a config-driven experiment runner for multi-task learning in PyTorch."""

__version__ = "0.1.0"
