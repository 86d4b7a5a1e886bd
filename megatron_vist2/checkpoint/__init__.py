"""Checkpoints, one component below the trainer: the on-disk format and atomic writes
(format.py), the save protocol (save.py) and its background writer (async_write.py), where a run
starts and how it resumes (resume.py), the tokenizer every checkpoint carries
(tokenizer_record.py), the rule that no non-finite checkpoint is saved (divergence.py), the test
faults (faults.py), reading any saved layout as full tensors (sources.py), writing full tensors
into a live engine or a plain module (reshard.py), and safetensors shards (safetensors_io.py).

Imports config, errors and parallel only: training/ (save and resume), convert/ (Hugging Face
export), inference/ and the tools build on it."""
