"""Training: dump-dir dataset, length-bucketed sampler, shared trainer, snapshot averaging."""
