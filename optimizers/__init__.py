"""Compiling csc programs with DSPy optimizers against project metrics."""
