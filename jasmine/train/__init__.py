"""Training: the one loop, optimizers and schedules, checkpoints, device mesh, logging."""
