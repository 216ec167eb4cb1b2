"""Whole plates: which sites a plate has and where their images are, where each site's cells come from,
and the plate's output folder. ``cpcnn profile`` and the service's plate jobs are thin layers over it."""
