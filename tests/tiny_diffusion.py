"""Tiny models built in code with random weights, for the image tests (nothing downloaded).

* :func:`save_tiny_pipeline`: a Stable Diffusion pipeline the size of diffusers' own test
  components (``get_dummy_components`` of their ``test_stable_diffusion.py``: a UNet with
  block_out_channels (4, 8), cross_attention_dim 32, a two-block AutoencoderKL, a
  three-layer CLIP text encoder, DDIM), with a character-level CLIP tokenizer written to a
  temporary vocabulary. 32 × 32 images (16 × 16 latents) in 2 steps take milliseconds.
* :func:`save_tiny_clip`: a CLIPModel with 32 × 32 images in 8 × 8 patches and its image
  processor's configuration, for ``embedder="clip:PATH"``.

Both are seeded (``torch.manual_seed``), so the same call saves the same weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

#: Image side of the tiny pipeline (the VAE halves it: 16 × 16 latents).
IMAGE_SIDE = 32
#: Vocabulary size of the tiny text encoders (the tokenizer uses fewer ids).
VOCAB_SIZE = 1000


def write_tiny_vocab(folder: Path) -> tuple[str, str]:
    """A character-level byte-level-BPE vocabulary (vocab.json, merges.txt with no merges)
    for ``CLIPTokenizer``: every printable ASCII character, alone and as a word end
    (``c</w>``), and CLIP's two special tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    chars = [c for c in string.printable if not c.isspace()]
    tokens += chars + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return str(vocab_file), str(merges_file)


def tiny_tokenizer(folder: Path, max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_tiny_vocab(folder)
    return CLIPTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=max_length)


def tiny_pipeline(work: Path, seed: int = 0):
    """The tiny StableDiffusionPipeline (random weights, seeded), on the CPU in float32."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=IMAGE_SIDE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                              set_alpha_to_one=False)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, norm_num_groups=2, sample_size=IMAGE_SIDE,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=64, layer_norm_eps=1e-05,
        num_attention_heads=8, num_hidden_layers=3, vocab_size=VOCAB_SIZE, max_position_embeddings=77,
    )).eval()
    tokenizer = tiny_tokenizer(work / "vocab")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_tiny_pipeline(folder: Path, seed: int = 0) -> str:
    """Build the tiny pipeline and ``save_pretrained`` it to ``folder`` (returned as str)."""
    folder = Path(folder)
    pipe = tiny_pipeline(folder.parent / f"{folder.name}-build", seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return str(folder)


def save_tiny_clip(folder: Path, seed: int = 0) -> str:
    """A tiny CLIPModel (32 × 32 images, 8 × 8 patches) and its image processor's config,
    saved to ``folder`` (returned as str)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder = Path(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": IMAGE_SIDE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_channels": 3},
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}).save_pretrained(str(folder))
    return str(folder)
