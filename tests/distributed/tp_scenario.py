"""What both sides of the tensor-parallel inference test run."""
OVERRIDES = ("model.init_std=0.1", "data.seq_length=1024")
LENGTHS = [(5, 7), (3, 1)]                 # (full chunks, extra tokens) per stream
PROMPTS = [lambda L: L + 3, lambda L: 2 * L]
