"""The named configurations of both models: constructor arguments by name, in one place.

* U-ViT (`uvit.UViT`, `uvit.UViTText`): the paper's released models, `UVIT_CONFIGS` (and
  `UVIT_DESCRIPTIONS`), by the name of their checkpoint; `uvit_config(name)`.
* UVit2DModel (`uvit2d.UVit2DModel`): diffusers' constructor defaults `CONFIG_DEFAULTS`, the
  published aMUSEd transformers and a tiny one for tests, `CONFIGS`; `resolve_config(...)`.

Both model modules import their names from here (`uvit.CONFIGS`, `uvit2d.CONFIGS`, ...), and the
torch port reads the same dicts.
"""

# --------------------------------------------------------------------------------------------------
# U-ViT: the paper's configurations (the `nnet` settings of its configs/*.py; checkpoint names)
# --------------------------------------------------------------------------------------------------
_COMMON = {"mlp_ratio": 4, "qkv_bias": False, "mlp_time_embed": False}

UVIT_CONFIGS = {
    "cifar10_uvit_small": dict(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12,
                               num_heads=8, num_classes=-1, **_COMMON),
    "celeba64_uvit_small": dict(img_size=64, patch_size=4, in_chans=3, embed_dim=512, depth=12,
                                num_heads=8, num_classes=-1, **_COMMON),
    "imagenet64_uvit_mid": dict(img_size=64, patch_size=4, in_chans=3, embed_dim=768, depth=16,
                                num_heads=12, num_classes=1000, **_COMMON),
    "imagenet64_uvit_large": dict(img_size=64, patch_size=4, in_chans=3, embed_dim=1024,
                                  depth=20, num_heads=16, num_classes=1000, **_COMMON),
    "imagenet256_uvit_large": dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1024,
                                   depth=20, num_heads=16, num_classes=1001, **_COMMON),
    "imagenet256_uvit_huge": dict(img_size=32, patch_size=2, in_chans=4, embed_dim=1152,
                                  depth=28, num_heads=16, num_classes=1001, conv=False, **_COMMON),
    "imagenet512_uvit_large": dict(img_size=64, patch_size=4, in_chans=4, embed_dim=1024,
                                   depth=20, num_heads=16, num_classes=1001, **_COMMON),
    "imagenet512_uvit_huge": dict(img_size=64, patch_size=4, in_chans=4, embed_dim=1152,
                                  depth=28, num_heads=16, num_classes=1001, conv=False, **_COMMON),
    "mscoco_uvit_small": dict(img_size=32, patch_size=2, in_chans=4, embed_dim=512, depth=12,
                              num_heads=8, clip_dim=768, num_clip_token=77, **_COMMON),
    "mscoco_uvit_small_deep": dict(img_size=32, patch_size=2, in_chans=4, embed_dim=512,
                                   depth=16, num_heads=8, clip_dim=768, num_clip_token=77,
                                   **_COMMON),
}
"""Constructor arguments of the paper's models, by the name of their released checkpoint. The
latent-space ImageNet models see 4-channel VAE latents (32x32 for 256px images, 64x64 for 512px);
their 1001st class is the "no class" token of classifier-free guidance. `use_checkpoint` (gradient
checkpointing, a training-memory option) is left out: it changes no parameter and no output."""

UVIT_DESCRIPTIONS = {
    "cifar10_uvit_small": "CIFAR-10, U-ViT-S/2",
    "celeba64_uvit_small": "CelebA 64x64, U-ViT-S/4",
    "imagenet64_uvit_mid": "ImageNet 64x64, U-ViT-M/4",
    "imagenet64_uvit_large": "ImageNet 64x64, U-ViT-L/4",
    "imagenet256_uvit_large": "ImageNet 256x256 (latent), U-ViT-L/2",
    "imagenet256_uvit_huge": "ImageNet 256x256 (latent), U-ViT-H/2",
    "imagenet512_uvit_large": "ImageNet 512x512 (latent), U-ViT-L/4",
    "imagenet512_uvit_huge": "ImageNet 512x512 (latent), U-ViT-H/4",
    "mscoco_uvit_small": "MS-COCO text-to-image, U-ViT-S/2",
    "mscoco_uvit_small_deep": "MS-COCO text-to-image, U-ViT-S/2 (deep)",
}


def uvit_config(name, **overrides):
    """A copy of `UVIT_CONFIGS[name]` with `overrides` applied; ValueError naming the known ones."""
    if name not in UVIT_CONFIGS:
        raise ValueError(f"unknown U-ViT config {name!r}; expected one of {sorted(UVIT_CONFIGS)}")
    return {**UVIT_CONFIGS[name], **overrides}


# --------------------------------------------------------------------------------------------------
# UVit2DModel: diffusers' constructor defaults, the published aMUSEd transformers, a tiny one
# --------------------------------------------------------------------------------------------------
# The constructor arguments of diffusers' `UVit2DModel` and their defaults.
CONFIG_DEFAULTS = {
    "hidden_size": 1024, "use_bias": False, "hidden_dropout": 0.0,
    "cond_embed_dim": 768, "micro_cond_encode_dim": 256, "micro_cond_embed_dim": 1280,
    "encoder_hidden_size": 768, "vocab_size": 8256, "codebook_size": 8192,
    "in_channels": 768, "block_out_channels": 768, "num_res_blocks": 3,
    "downsample": False, "upsample": False, "block_num_heads": 12,
    "num_hidden_layers": 22, "num_attention_heads": 16, "attention_dropout": 0.0,
    "intermediate_size": 2816, "layer_norm_eps": 1e-6, "ln_elementwise_affine": True,
    "sample_size": 64,
}

# The published aMUSEd transformers (amused/amused-256 and amused/amused-512 on the Hugging Face
# Hub). Both are 22 layers of width 1024 on a 768-channel conv stage; the 512 model halves its
# 32 x 32 token grid in the conv stage (downsample/upsample) so the transformer sees 16 x 16 tokens.
# `sample_size` is the token grid side (unused by the model). Dropout only acts in train mode.
# Provenance: amused-256 reproduces the spec's 603,537,664 parameters. The amused-512 entry
# (down/up-sampling on) and both dropout values were inferred from diffusers' conversion
# script and the aMUSEd paper, not checked against the Hub's config.json (no internet here).
CONFIGS = {
    "amused-256": {**CONFIG_DEFAULTS, "hidden_dropout": 0.1, "attention_dropout": 0.1,
                   "sample_size": 16},
    "amused-512": {**CONFIG_DEFAULTS, "hidden_dropout": 0.1, "attention_dropout": 0.1,
                   "downsample": True, "upsample": True, "sample_size": 32},
    # Small enough for tests, notebooks and exercises (spec section 5.1), with every optional piece
    # on: the kv_mapper (hidden_size != block_out_channels) and the down/up samplers.
    "tiny": {**CONFIG_DEFAULTS, "hidden_size": 64, "block_out_channels": 32, "in_channels": 16,
             "vocab_size": 40, "codebook_size": 32, "num_res_blocks": 2, "num_hidden_layers": 2,
             "num_attention_heads": 4, "block_num_heads": 2, "intermediate_size": 96,
             "cond_embed_dim": 24, "micro_cond_encode_dim": 8, "micro_cond_embed_dim": 40,
             "encoder_hidden_size": 24, "downsample": True, "upsample": True, "sample_size": 8},
}


def resolve_config(config=None, **overrides):
    """A complete `UVit2DModel` config dict from a name in `CONFIGS`, a dict, or None (defaults).

    Keys diffusers writes for itself (starting with `_`: `_class_name`, `_diffusers_version`, ...)
    are dropped; any other key the model does not know is a ValueError that names it. Missing keys
    take diffusers' defaults. `overrides` are applied last (e.g. `resolve_config("tiny",
    use_bias=True)`).
    """
    if config is None:
        config = {}
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"config: expected one of {sorted(CONFIGS)}, got {config!r}")
        config = CONFIGS[config]
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a name or a dict, got {type(config).__name__}")
    given = {k: v for k, v in {**config, **overrides}.items() if not str(k).startswith("_")}
    unknown = sorted(k for k in given if k not in CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"config: unknown key(s) {unknown} for UVit2DModel; "
                         f"expected keys among {sorted(CONFIG_DEFAULTS)}")
    return {**CONFIG_DEFAULTS, **given}

