"""Training-side code for the CNN-1 network: architecture, torch module and checkpoints (needs torch)."""
