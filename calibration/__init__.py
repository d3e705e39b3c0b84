"""Calibration: datasets, correctness scoring, conformal threshold fitting."""
