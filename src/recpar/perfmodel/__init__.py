"""Analytic performance model: predicts iteration time, communication share and memory of a
parallel plan from the model's shape and a hardware profile (α–β–γ collectives + FLOP count).

Everything this package outputs for hardware that was not measured is a *projection* and is
labelled so (`"kind": "projected"`).
"""
