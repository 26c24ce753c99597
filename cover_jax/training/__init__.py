"""Training: the step, the loop, stages, the optimizer, checkpoints, evaluation."""
