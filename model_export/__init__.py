"""Weights in (Keras HDF5, cpcnn checkpoints, Zenodo), verified ONNX models out (needs torch)."""
