"""Breeding: bootstrap the synthetic training distribution from real photographs."""
