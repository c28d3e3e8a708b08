"""Optimizer parameter groups with their own learning rates, and learning-rate schedules."""
