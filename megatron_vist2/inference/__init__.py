"""Inference with global context compression (and the full-KV baseline on the same path)."""
from .engine import InferenceError, SamplingParams, Vist2Engine, sample

__all__ = ["InferenceError", "SamplingParams", "Vist2Engine", "sample"]
