"""Evaluation: I3D weights, the FVD protocol and FVD between video sets."""
