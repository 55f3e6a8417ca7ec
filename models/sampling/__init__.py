"""Sampling: the noise schedule of a model, schedulers, initial noise and the samplers."""
