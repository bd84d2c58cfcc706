"""Priors, the synthetic DataModule, real-face corpora and landmarks (SPEC §3, §6)."""
