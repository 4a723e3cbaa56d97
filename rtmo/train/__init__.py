"""Training: SimOTA assignment, losses, optimiser/schedule/EMA and the trainer loop."""
