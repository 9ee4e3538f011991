"""Thymos: a governed agent runtime."""

__version__ = "0.1.0"
