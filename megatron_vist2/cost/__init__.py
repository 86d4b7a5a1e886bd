"""What a model and a layout cost, from the config alone (no model is built): FLOPs of the parts
and of a batch (flops.py), the tiles a block-sparse attention kernel computes (block_sparsity.py),
and per-rank memory, communication and step time of a layout with their ranking (planner.py)."""
