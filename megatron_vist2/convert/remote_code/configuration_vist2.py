"""VIST2 configuration for transformers (trust_remote_code), written by megatron_vist2's exporter."""
from transformers import PretrainedConfig, Qwen3Config


class Vist2Config(PretrainedConfig):
    model_type = "vist2"
    sub_configs = {"text_config": Qwen3Config}

    def __init__(self, text_config=None, vision=None, aligner_merge=2, chunk=None, render=None,
                 visual_tokens_per_chunk=8, tokenizer_file="tokenizer.model", asset_files=None,
                 tokenizer_vocab_size=None, **kwargs):
        if not isinstance(text_config, Qwen3Config):   # the backbone's config
            text_config = Qwen3Config(**(text_config or {}))
        self.text_config = text_config
        self.vision = vision or {}                  # ViT sizes: num_layers, hidden_size, ...
        self.aligner_merge = aligner_merge          # k x k patches -> one visual token
        self.chunk = chunk or {}                    # text_tokens (L), image_height, image_width
        self.render = render or {}                  # the renderer's settings (font file beside)
        self.visual_tokens_per_chunk = visual_tokens_per_chunk
        self.tokenizer_file = tokenizer_file        # a sentencepiece model; "" = HF tokenizer files
        self.asset_files = asset_files or []         # font + tokenizer files: save_pretrained copies them
        self.tokenizer_vocab_size = tokenizer_vocab_size   # checked against the tokenizer at load
        super().__init__(**kwargs)
