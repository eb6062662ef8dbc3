"""Measurement: timing and memory in child processes, statistics, machine facts."""
