"""rlxf: reinforcement learning from any feedback."""
__version__ = "0.1.0"
