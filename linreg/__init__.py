"""Training-core infrastructure: config, distributed set-up, schedules, checkpoints, metrics."""
