"""Typed configuration of a megatron_vist2 run.

Every field has a default; presets (YAML files in ``presets/``) and dotted command-line overrides
(``model.llm.num_layers=4``) change them. ``load.py`` turns YAML into these dataclasses and
``validate.py`` rejects impossible combinations before any process group or model is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

# The allowed values of each choice field, declared once: validate.py checks them by these types.
RenderMode = Literal["fit", "strict"]
RenderWrap = Literal["word", "char"]
AttentionBackend = Literal["auto", "sdpa", "flex"]
ZeroStage = Literal[0, 1, 2, 3]
Dtype = Literal["auto", "fp32", "bf16"]
ActivationCheckpointing = Literal["none", "full", "selective"]
SpikeMode = Literal["off", "log", "rollback"]
# The context a text chunk sees (docs/spec.md, "Controls"): "vist2" = the model (earlier chunks as
# visual tokens); "text" = the uncompressed control (earlier chunks as text, plain causal
# attention over the segment); "window" = the no-history control (its own chunk only).
Context = Literal["vist2", "text", "window"]
# What an inference or benchmark command line runs on (--device, --dtype: an explicit dtype).
Device = Literal["cpu", "cuda"]
InferenceDtype = Literal["fp32", "bf16"]
# What a training run optimises (docs/training.md, "Stage 0: teaching the front to read"):
# "lm" = the VIST2 next-token objective over packed rows (plus train.ocr_weight x the OCR head's
# loss on the rows' images when model.ocr_head.enabled); "ocr" = the front alone: rendered chunks
# of the training split -> ViT -> aligner -> OCR head, cross-entropy against the renderer's own
# layout, no LLM forward (the LLM's weights stay as they are).
Objective = Literal["lm", "ocr"]
# The OCR head's characters by default: a newline and printable ASCII (every other character is
# the class "unknown"). The list is stored in the config, so checkpoints and evaluation agree.
DEFAULT_OCR_CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))


@dataclass
class VisionConfig:
    """The ViT that reads a rendered chunk. Defaults: SigLIP2 ViT-L/16 shape."""
    num_layers: int = 24
    hidden_size: int = 1024
    num_heads: int = 16
    ffn_hidden_size: int = 4096
    patch_size: int = 16
    num_channels: int = 3          # grayscale renders are repeated over channels (SigLIP takes RGB)
    layernorm_eps: float = 1e-6


@dataclass
class AlignerConfig:
    """k x k patch merge (concatenation of neighbouring patches), then tanh(x W + b)."""
    merge: int = 2


@dataclass
class LLMConfig:
    """Qwen3-style decoder. Defaults: Qwen3-0.6B."""
    vocab_size: int = 151936
    make_vocab_size_divisible_by: int = 128   # the built vocabulary is padded to a multiple of this x tp
    # The tokenizer's size when the embedding has more rows than it has pieces (an imported
    # Hugging Face model: Qwen3 has 151,936 rows for 151,669 pieces); the extra rows are never
    # targets and never sampled. null: the tokenizer has vocab_size pieces.
    tokenizer_vocab_size: Optional[int] = None
    num_layers: int = 28
    hidden_size: int = 1024
    ffn_hidden_size: int = 3072
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qk_norm: bool = True              # RMSNorm on each head's q and k (Qwen3); false: Llama-style
    hidden_dropout: float = 0.0       # on each attention / MLP output before the residual add
    attention_dropout: float = 0.0    # on attention probabilities (sdpa backend only)


@dataclass
class ChunkConfig:
    """How text is cut and how big the image of one chunk is."""
    text_tokens: int = 64          # L: text tokens per chunk
    image_height: int = 128
    image_width: int = 128


@dataclass
class RenderConfig:
    """Deterministic rendering of a chunk's text into a grayscale image."""
    font: str = "DejaVuSansMono.ttf"   # a file in megatron_vist2/data/fonts, or an absolute path
    font_size: int = 12
    min_font_size: int = 6             # fit mode shrinks down to this size, then raises
    mode: RenderMode = "fit"                  # "fit" (shrink until it fits) or "strict" (raise on overflow)
    # "word": greedy wrap at spaces; "char": every line filled to the width, broken between any two
    # characters (with one font size a written character never moves: its place follows from the
    # text before it, an address the decoder can be given while writing; docs/fidelity.md)
    wrap: RenderWrap = "word"
    margin: int = 2                    # pixels left blank on every side
    line_spacing: int = 1              # extra pixels between lines
    tab_width: int = 4                 # a tab becomes this many spaces
    # Legibility: the renderer warns (once per size) when a chunk is drawn at a size whose glyph
    # advance (the width of "0") is below this many pixels; compress with the image geometry and
    # model.aligner.merge rather than with smaller glyphs (docs/spec.md, "Rendering"). 0 = never warn.
    min_legible_advance: int = 4


@dataclass
class OcrHeadConfig:
    """An auxiliary reading head on the aligner output (models/ocr_head.py): learned queries
    cross-attend to one image's visual tokens and classify every cell of a lines x columns
    character grid (class 0 "empty", 1 "unknown", then ``charset``), trained by cross-entropy
    against the renderer's own layout (data/ocr_targets.py). Stage 0 uses it to teach the front
    to read; it is not part of the exported Hugging Face model."""
    enabled: bool = False
    # The grid: at least the lines an image holds at model.render.min_font_size, and a line's
    # characters at that size plus one (the space or newline its wrap consumed); the trainer
    # names the values needed when these are too small (tools/inspect_data.py --ocr-grid)
    lines: int = 0
    columns: int = 0
    charset: str = DEFAULT_OCR_CHARSET
    hidden_size: int = 128
    num_heads: int = 4
    num_layers: int = 2                # cross-attention blocks of the queries
    slots_per_query: int = 4           # grid cells one query classifies
    slot_size: int = 64                # features of one cell before its classifier

    EMPTY = 0                          # class ids before the charset's (not fields: fixed)
    UNKNOWN = 1

    @property
    def num_classes(self) -> int:
        return len(self.charset) + 2

    @property
    def cells(self) -> int:
        return self.lines * self.columns

    @property
    def num_queries(self) -> int:
        return -(-self.cells // self.slots_per_query)


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    ocr_head: OcrHeadConfig = field(default_factory=OcrHeadConfig)
    init_std: float = 0.02
    # "sdpa" (dense bool mask, built per forward), "flex" (compiled, block-sparse) or "auto": flex
    # on a GPU, sdpa on the CPU and with attention dropout (models/attention.py resolve_backend)
    attention_backend: AttentionBackend = "auto"
    # "vist2", or a control trained on the same rows and targets: "text" (history as text) or
    # "window" (no history); the controls have no vision encoder or aligner
    context: Context = "vist2"
    # The reading cursor (docs/spec.md, "Reading cursor"; data/cursor.py, models/cursor.py): each
    # read-back text position gets, added to its embedding, the cell of the OCR grid
    # (model.ocr_head.lines x columns) where the next character is drawn, computed from the text
    # written so far and the image; needs model.render.wrap=char. A training and read-back aid
    # like the OCR head: not exported, and a new stage (checkpoint.init_from) may add or drop it
    readback_cursor: bool = False

    @property
    def patches_per_image(self) -> int:
        p = self.vision.patch_size
        return (self.chunk.image_height // p) * (self.chunk.image_width // p)

    @property
    def visual_token_side(self) -> int:
        """p k: each visual token is the aligner's merge of k x k patches, a square of this many pixels."""
        return self.vision.patch_size * self.aligner.merge

    @property
    def visual_token_grid(self) -> Tuple[int, int]:
        """(H / (p k), W / (p k)): the visual tokens' rows and columns over the image, row-major."""
        pk = self.visual_token_side
        return self.chunk.image_height // pk, self.chunk.image_width // pk

    @property
    def visual_tokens_per_chunk(self) -> int:
        """m = (H / (p k)) (W / (p k))."""
        rows, columns = self.visual_token_grid
        return rows * columns

    @property
    def compression_ratio(self) -> float:
        """rho = L / m."""
        return self.chunk.text_tokens / self.visual_tokens_per_chunk


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    sequence_parallel: bool = False    # split the LLM's residual stream along the sequence over TP ranks
    pipeline_parallel: int = 1
    # decoder layers per pipeline stage, first to last (e.g. [1, 3]: the first stage also runs
    # the ViT, aligner and embedding); null = an even split
    pipeline_layers: Optional[List[int]] = None
    zero_stage: ZeroStage = 0
    micro_batch_size: int = 1          # rows per rank per forward (train.objective=ocr: images)
    global_batch_size: int = 8         # rows per optimizer step, over all data-parallel ranks (ocr: images)
    # data_parallel is derived: world_size / (tensor_parallel * pipeline_parallel)


@dataclass
class DataConfig:
    tokenizer: str = "data/tokenizer/sotu.model"   # sentencepiece .model file or Hugging Face dir
    # An indexed dataset prefix (<prefix>.bin/.idx/.json), or a weighted blend of several:
    # "0.7 data/web_train 0.3 data/books_train" (weights are normalised).
    train_prefix: str = "data/sotu_train"
    valid_prefix: str = "data/sotu_valid"
    cache_dir: str = "data/cache"                  # cached blend indices
    seq_length: int = 2048                         # tokens per packed row (text + visual)
    readback_fraction: float = 0.0                 # share of chunks in OCR read-back mode
    # curriculum: [[step, share], ...] from each step on (e.g. [[0, 1.0], [500, 0.5], [1000, 0.0]]);
    # empty = readback_fraction throughout
    readback_schedule: List[List[float]] = field(default_factory=list)
    # training rows only: each read-back chunk replaces a share u ~ U(0, readback_input_mask) of its
    # text inputs by id 0 (labels unchanged), so its targets must come from its image, not from
    # the text before them (data/packing.py: mask_readback_inputs); 0 = off, 1 = up to all
    readback_input_mask: float = 0.0
    # history-length curriculum: [[step, seq_length], ...] packs rows of that many tokens (more
    # chunks of history per row) from each step on, up to data.seq_length (e.g. [[0, 2048],
    # [5000, 4096], [10000, 8192]]); empty = data.seq_length throughout
    seq_length_schedule: List[List[int]] = field(default_factory=list)
    num_workers: int = 1                           # DataLoader workers per rank (rendering runs there)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0             # passed to DeepSpeed explicitly; 0 disables clipping
    # learning-rate multiplier per parameter-name prefix, e.g. {front.aligner: 10.0}; longest wins
    lr_multipliers: Dict[str, float] = field(default_factory=dict)


@dataclass
class HealthConfig:
    """Run health (training/health.py, docs/training.md "Run health")."""
    # a step with a non-finite loss or gradient on any rank is skipped on every rank; this many
    # skips in a row stop the run (the last good checkpoint stays as it is)
    max_consecutive_skips: int = 5
    spike_mode: SpikeMode = "log"      # loss spikes: "off", "log" or "rollback" (to the last checkpoint)
    spike_window: int = 100            # the z-score's moving window of recent losses (steps)
    spike_zscore: float = 6.0          # a loss this many standard deviations above the window's mean is a spike
    spike_skip_batches: int = 100      # rollback: global batches after the spike that are never trained on
    # watchdog: a step running longer than max(watchdog_floor_s, watchdog_multiple x median step
    # time) dumps this rank's Python stacks to <logging.dir>/watchdog/; 0 = no watchdog
    watchdog_multiple: float = 10.0
    watchdog_floor_s: float = 120.0


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 1234
    dtype: Dtype = "auto"                # "auto" = bf16 on GPU, fp32 on CPU; or "fp32" / "bf16"
    activation_checkpointing: ActivationCheckpointing = "none"   # "none", "full" (each decoder block) or "selective" (attention)
    log_interval: int = 10
    eval_interval: int = 200
    eval_batches: int = 8              # global batches in one evaluation (the first of the valid set)
    max_wall_minutes: float = 0.0      # save and exit 0 after this long (0 = no limit), e.g. under SLURM
    peak_tflops: float = 0.0           # device peak for MFU; 0 = the GPU's bf16 peak by name (none on CPU)
    # parameter-name prefixes kept fixed in this stage, e.g. [front.vision] or [layers, head]
    freeze: List[str] = field(default_factory=list)
    ocr_probe_batches: int = 0         # read-back accuracy probe at each evaluation (global batches)
    health: HealthConfig = field(default_factory=HealthConfig)
    ocr_cer_chunks: int = 0            # held-out chunks read back greedily at each evaluation (CER)
    objective: Objective = "lm"        # "lm" (rows, next-token loss) or "ocr" (the front alone: stage 0)
    ocr_weight: float = 1.0            # "lm" with model.ocr_head.enabled: loss = LM mean + this x OCR mean
    # held-out chunks read by the OCR head at each evaluation (character accuracy = 1 - CER, and
    # its blind score: the images rotated by one); 0 = none
    ocr_head_eval_chunks: int = 0
    # Weights in the training objective (metrics/loss.py; the LM loss is the weighted mean): targets
    # predicted from images alone (each chunk's first token: from V_{i-1}, or from the read-back
    # marker in read-back mode), and every target of a read-back chunk. 1 = the plain mean.
    image_target_weight: float = 1.0
    readback_target_weight: float = 1.0
    # Guided attention with the reading cursor (model.readback_cursor; docs/spec.md, "Reading
    # cursor"): at each read-back text position with a cursor, every head of the first
    # ``cursor_attention_layers`` decoder layers is trained towards the visual token whose image
    # region holds the cursor's cell: loss += this x the mean of -log(its attention there). 0 = off.
    cursor_attention_weight: float = 0.0
    cursor_attention_layers: int = 2


@dataclass
class CheckpointConfig:
    save_dir: str = "runs/default/checkpoints"
    save_interval: int = 0             # 0 = only at the end
    load_dir: Optional[str] = None     # resume from this checkpoint directory (its `latest`) or step dir
    auto_resume: bool = True           # without load_dir: continue from save_dir's `latest` if any
    init_from: Optional[str] = None    # a new stage: weights of this checkpoint, fresh optimizer
    keep_last: int = 0                 # keep the newest N complete checkpoints (0 = keep all)
    # training waits only for the copy of each rank's state into host memory; the files are
    # written by a background thread (docs/checkpoints.md). Off by default: the copy holds a
    # second image of the rank's weights and optimizer state in host memory until written
    async_save: bool = False
    # resume / init_from with a tokenizer other than the checkpoint's (every embedding row then
    # means another piece): refused unless this says the change is intended
    allow_new_tokenizer: bool = False
    # a checkpoint whose weights' norm is more than this many times the norm the run started from
    # (its initial or resumed weights) is refused as diverged, not saved (checkpoint/divergence.py);
    # 0 = no limit (non-finite weights are refused whatever this says)
    max_weight_growth: float = 100.0


@dataclass
class LoggingConfig:
    dir: str = "runs/default"          # TensorBoard events and metrics.jsonl go here
    tensorboard: bool = True
    # Weights & Biases (pip install megatron_vist2[wandb]): the same scalars as TensorBoard, rank 0
    wandb: bool = False
    wandb_project: str = "megatron_vist2"
    wandb_name: Optional[str] = None   # the run's name (None: W&B picks one)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"   # offline (no network; `wandb sync` later), online, disabled


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    preset: str = ""                   # the preset this config started from (informational)

