"""Text → windows → activation rows (METHOD §0): text sources, windows, activations with their cache and norm stats,
batches, chunks."""
