"""Conversion of official FIND checkpoints and parity checks against the official code."""
