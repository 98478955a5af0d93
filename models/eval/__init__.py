"""Evaluation models: the Kinetics-400 I3D and FVD (numpy and torch only)."""
