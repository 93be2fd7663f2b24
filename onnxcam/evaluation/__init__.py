"""Judging explanations: faithfulness and localisation metrics, ``evaluate``, its figure, and benchmarks."""
