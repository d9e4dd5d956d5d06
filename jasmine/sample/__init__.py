"""Sampling: MaskGIT frame generation."""
