"""megatron_vist2: distributed pretraining of VIST2 models (vision-text global context compression)."""
import warnings

# megatron-core falls back to torch implementations without apex / Transformer Engine (always the
# case on the CPU); that is expected here, so its import-time warnings are noise.
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
warnings.filterwarnings("ignore", message=".*Apex is not installed.*")

__version__ = "0.1.0"
