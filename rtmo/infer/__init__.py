"""Inference: image loading, pre/post-processing, results, sources, drawing, tracking."""
