"""What everything stands on: the one transformer Block, checkpoints, device, paths, atomic files, argument checks, size limits, stats, timing."""
