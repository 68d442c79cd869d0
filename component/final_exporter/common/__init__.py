"""Pieces every layer shares: names, errors, progress, libc and filesystem primitives."""
