"""Running a method: the driver loop, the in-process and Ray executors, checkpoints, sweeps."""
