"""The checkpoint directory as a component below the trainer: its on-disk format and atomic writes
(format.py), reading any saved layout as full tensors (sources.py), writing full tensors into a
live engine or a plain module (reshard.py), and safetensors shards (safetensors_io.py).

Imports nothing of this package but errors.py: training/ (save and resume), convert/ (Hugging
Face export), inference/ and the tools build on it."""
