"""Priors, parameter sources, photos and landmarks, and the DataModule."""
