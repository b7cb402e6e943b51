"""Parallel plans and the functions that apply them to the single-device model."""
