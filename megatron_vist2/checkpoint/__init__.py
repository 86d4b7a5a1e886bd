"""Checkpoints, one component below the trainer. The training side talks to one object,
``CheckpointManager`` (manager.py: when to save, what a resume applies, rollback, the stop of a
diverged run). Behind it: the save protocol (save.py) and its background writer
(async_write.py), where a run starts and how it resumes (resume.py), what makes a checkpoint good
(divergence.py), the tokenizer every checkpoint carries (tokenizer_record.py), the on-disk format,
atomic writes and write errors (format.py), the test faults (faults.py), and for the tools any
saved layout read as full tensors (sources.py), full tensors written into a live engine or a plain
module (reshard.py) and safetensors shards (safetensors_io.py).

Imports config, errors and parallel only: training/ (save and resume), convert/ (Hugging Face
export), inference/ and the tools build on it. Import its modules directly (this file imports
nothing: tools that only read a manifest do not load DeepSpeed)."""
