"""Synthetic Cell Painting screens, written the way real ones arrive (see :mod:`cpcnn.synth.plate`)."""
