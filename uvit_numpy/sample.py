"""Make digits with a shipped (or your own) model, in pure NumPy: `python -m uvit_numpy.sample`.

    python -m uvit_numpy.sample uvit-digits --labels 0,1,2,3,4,5,6,7,8,9 --per-label 8 --seed 0 \\
        --out digits.png --npz digits.npz
    python -m uvit_numpy.sample uvit-digits --scheduler ddim --steps 50 --guidance 3
    python -m uvit_numpy.sample amused-digits --steps 12 --guidance 3 --temperature 2
    python -m uvit_numpy.sample runs/uvit-digits/model          # a folder your training wrote

The first argument is a shipped model's name (`uvit_numpy.pretrained`) or a model folder. The
PNG is a grid with one row per label; the .npz holds `images` float32 (N, 28, 28) in [0, 1] and
`labels` int64 (N,). Unset options take the model's own defaults (its config's `_sampling`).

* uvit-digits (diffusion): `--scheduler` ddpm, ddim or dpmsolver++, `--steps`, `--guidance` (w,
  diffusers' convention: 1 is no guidance; the U-ViT paper's scale s is w - 1), `--eta` (DDIM).
* amused-digits (masked tokens): `--steps` (MaskGIT decoding steps), `--guidance`
  (uncond + w (cond - uncond) on the logits, as aMUSEd), `--temperature` (the Gumbel temperature
  at the first step, annealed to 0). The codes are decoded by the tokenizer the model was trained
  on, which its folder holds (`tokenizer.safetensors` for k-means, `vqvae/` for a VQ-GAN);
  `--tokenizer` names another copy of it (a VQ-GAN folder such as
  `uvit_numpy/pretrained/vqgan-digits`, or a k-means file).

The library functions (`load_digit_model`, `sample_digits`, `save_grid`) take and return arrays,
so the book uses them without the command line; `uvit_torch.sample` is the same with torch.
"""

import argparse
import os
import sys
import time

import numpy as np

from .schedulers import SCHEDULERS
from .weights import find_model_folder, read_config
SCHEDULER_NAMES = tuple(SCHEDULERS)              # the registry's names


class DigitModel:
    """A loaded digit generator: `kind` ("diffusion" or "maskgit"), the `model`, the `tokenizer`
    (maskgit), its training config and its default sampling settings."""

    def __init__(self, kind, model, training, sampling, tokenizer=None, folder=None):
        self.kind, self.model, self.training = kind, model, training
        self.sampling, self.tokenizer, self.folder = sampling, tokenizer, folder

    @property
    def num_classes(self):
        return self.training["config"]["model"]["num_classes"] - 1 if self.kind == "diffusion" \
            else self.training["config"]["num_classes"]


def resolve_folder(name_or_path):
    """A shipped model's folder by name, or the given folder (a run's `model/`, say)."""
    from . import pretrained
    if name_or_path in pretrained.NAMES:
        return pretrained.path(name_or_path)
    return find_model_folder(name_or_path)


def folder_info(folder):
    """(kind, training info, sampling defaults) from a model folder's config.json."""
    config = read_config(folder)
    training, sampling = config.get("_training"), config.get("_sampling")
    if not training or not sampling:
        raise ValueError(f"{folder!r} holds no digit model of this project's trainers: its "
                         f"config.json has no _training/_sampling entries")
    kind = {"UViT": "diffusion", "UVit2DModel": "maskgit"}.get(config.get("_class_name"))
    if kind is None:
        raise ValueError(f"{folder!r}: expected a UViT or UVit2DModel folder, got _class_name "
                         f"{config.get('_class_name')!r}")
    return kind, training, sampling


def load_digit_model(name_or_path, dtype=np.float32, classes=None, tokenizer=None):
    """Load a digit model (a shipped name or a folder) for sampling. Returns a DigitModel.
    classes: {"diffusion": UViT, "maskgit": UVit2DModel} of the package to load into (the NumPy
    ones by default; `uvit_torch.sample` passes its own). tokenizer: for a masked-token model,
    where its tokenizer is if not in its folder (a VQ-GAN folder or shipped name, a k-means
    file); it must be of the kind the model was trained on, with as many codes."""
    if classes is None:
        from .uvit import UViT
        from .uvit2d import UVit2DModel
        classes = {"diffusion": UViT, "maskgit": UVit2DModel}
    folder = resolve_folder(name_or_path)
    kind, training, sampling = folder_info(folder)
    if kind == "diffusion" and tokenizer is not None:
        raise ValueError(f"{folder!r} is a diffusion model, which makes pixels: a tokenizer is "
                         f"only for masked-token models")
    tok = load_model_tokenizer(folder, training, tokenizer) if kind == "maskgit" else None
    model = classes[kind].from_pretrained(folder, dtype)
    return DigitModel(kind, model, training, sampling, tok, folder)


def load_model_tokenizer(folder, training, tokenizer=None):
    """A masked-token model's tokenizer: its folder's, or `tokenizer` (a shipped VQ-GAN's name,
    a VQ-GAN folder, a k-means file), checked against what the model was trained on (the kind,
    k-means or VQ-GAN, and the number of codes) before any sampling."""
    from . import pretrained
    from .tokenizer import VQGANTokenizer, load_tokenizer
    if tokenizer in pretrained.NAMES:
        tokenizer = pretrained.path(tokenizer)
    tok = load_tokenizer(folder if tokenizer is None else tokenizer)
    cfg = training["config"]
    trained_on = "vqgan" if "vqgan" in cfg["tokenizer"] else "kmeans"
    given = "vqgan" if isinstance(tok, VQGANTokenizer) else "kmeans"
    words = {"vqgan": "a VQ-GAN's", "kmeans": "k-means"}
    if given != trained_on:
        raise ValueError(f"{folder!r} was trained on {words[trained_on]} codes; the tokenizer "
                         f"{tokenizer or folder!r} is {words[given]}")
    K = cfg["model"]["codebook_size"]
    if tok.codebook_size != K:
        raise ValueError(f"{folder!r} predicts {K} codes; the tokenizer {tokenizer or folder!r} "
                         f"has {tok.codebook_size}")
    return tok


def settings(digit_model, scheduler=None, steps=None, guidance_scale=None, temperature=None,
             eta=None):
    """The sampling settings: the given ones, the model's defaults for the rest."""
    s = dict(digit_model.sampling)
    given = {"scheduler": scheduler, "steps": steps, "guidance_scale": guidance_scale,
             "temperature": temperature, "eta": eta}
    s.update({k: v for k, v in given.items() if v is not None})
    s.setdefault("eta", 0.0)
    if digit_model.kind == "diffusion" and s["scheduler"] not in SCHEDULER_NAMES:
        raise ValueError(f"expected a scheduler in {SCHEDULER_NAMES}, got {s['scheduler']!r}")
    if isinstance(s.get("temperature"), (int, float)):
        s["temperature"] = (float(s["temperature"]), 0.0)   # one number: anneal it to 0
    return s


def make_scheduler(name, diffusion_config, schedulers_module):
    """A sampler of `schedulers_module` (either package's) for the model's training schedule.
    DDPM and DDIM do not clip their x0 estimate (diffusers' default clips it to [-1, 1]; the U-ViT
    paper never does): clipping x0 but not the noise estimate made the shipped v-prediction model's
    DDIM samples far worse (measured: class accuracy 0.31 against 0.88 unclipped)."""
    cls = schedulers_module.SCHEDULERS[name]
    kw = dict(num_train_timesteps=diffusion_config["num_train_timesteps"],
              beta_schedule=diffusion_config["beta_schedule"],
              beta_start=diffusion_config["beta_start"], beta_end=diffusion_config["beta_end"],
              prediction_type=diffusion_config.get("prediction_type", "epsilon"))
    if cls.clips_sample:
        kw["clip_sample"] = False
    return cls(**kw)


def maskgit_conditions(labels, num_classes, micro_conds, dtype):
    """The text inputs of a class (one-hot) and of the null class, and the micro-conditions."""
    from .training import class_condition
    ehs, pooled = class_condition(np.asarray(labels), num_classes, dtype)
    null = np.full(len(labels), num_classes)
    neg_ehs, neg_pooled = class_condition(null, num_classes, dtype)
    micro = np.tile(np.asarray(micro_conds, dtype=dtype), (len(labels), 1))
    return ehs, pooled, neg_ehs, neg_pooled, micro


def sample_digits(digit_model, labels, seed=0, scheduler=None, steps=None, guidance_scale=None,
                  temperature=None, eta=None, batch_size=250):
    """Digits of the given labels (N,) ints in [0, 10): images (N, 28, 28) float32 in [0, 1].

    Diffusion: `sampling.sample` with the chosen scheduler; masked tokens: `maskgit.generate`
    then the tokenizer's decode. Batches of `batch_size` labels, each seeded from (seed, batch).
    """
    from . import schedulers
    from .data import to_unit
    from .sampling import sample
    from .maskgit import generate
    labels = np.asarray(labels, dtype=np.int64)
    s = settings(digit_model, scheduler, steps, guidance_scale, temperature, eta)
    out = []
    for b, start in enumerate(range(0, len(labels), batch_size)):
        part = labels[start:start + batch_size]
        batch_seed = [seed, b]
        if digit_model.kind == "diffusion":
            sched = make_scheduler(s["scheduler"], digit_model.training["config"]["diffusion"],
                                   schedulers)
            x = sample(digit_model.model, part, sched, s["steps"], s["guidance_scale"],
                       seed=batch_seed, eta=s["eta"])
            out.append(to_unit(x[:, 0]))
        else:
            cfg = digit_model.training["config"]
            ehs, pooled, neg_ehs, neg_pooled, micro = maskgit_conditions(
                part, cfg["num_classes"], cfg["micro_conds"], digit_model.model.dtype)
            g = digit_model.tokenizer.grid
            codes = generate(digit_model.model, ehs, pooled, micro, g, g, num_steps=s["steps"],
                             temperature=tuple(s["temperature"]),
                             guidance_scale=s["guidance_scale"],
                             negative_encoder_hidden_states=neg_ehs,
                             negative_pooled_text_emb=neg_pooled,
                             rng=np.random.default_rng(batch_seed))
            out.append(to_unit(digit_model.tokenizer.decode(codes)))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def grid_image(images, per_row):
    """(N, 28, 28) -> one (rows * 30, per_row * 30) picture with a 2-pixel gap between digits."""
    N, H, W = images.shape
    rows = -(-N // per_row)
    canvas = np.ones((rows * (H + 2), per_row * (W + 2)), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, per_row)
        canvas[r * (H + 2) + 1:r * (H + 2) + 1 + H, c * (W + 2) + 1:c * (W + 2) + 1 + W] = img
    return canvas


def save_grid(images, path, per_row):
    """A PNG of the digits, `per_row` to a row, white on black (matplotlib's imsave)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    plt.imsave(path, grid_image(images, per_row), cmap="gray", vmin=0.0, vmax=1.0)


def save_npz(path, images, labels):
    np.savez_compressed(path, images=images.astype(np.float32), labels=labels.astype(np.int64))


def parse_labels(text):
    """"0,1,2" -> array([0, 1, 2]); a clear error for anything else."""
    try:
        labels = np.array([int(v) for v in text.split(",") if v.strip() != ""], dtype=np.int64)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated digits such as 0,1,2, "
                                         f"got {text!r}") from None
    if len(labels) == 0 or labels.min() < 0 or labels.max() > 9:
        raise argparse.ArgumentTypeError(f"expected digits 0..9, got {text!r}")
    return labels


def build_parser(prog):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="uvit-digits, amused-digits, or a model folder")
    parser.add_argument("--labels", type=parse_labels, default=parse_labels("0,1,2,3,4,5,6,7,8,9"))
    parser.add_argument("--per-label", type=int, default=8, help="digits per label (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="digits.png", help="PNG grid (default digits.png)")
    parser.add_argument("--npz", help="also write images and labels to this .npz")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="diffusion sampler")
    parser.add_argument("--steps", type=int, help="sampling steps")
    parser.add_argument("--guidance", type=float, help="guidance scale w (1: none)")
    parser.add_argument("--eta", type=float, help="DDIM's noise weight (default 0)")
    parser.add_argument("--temperature", type=float, help="masked tokens: first-step temperature")
    parser.add_argument("--tokenizer", help="masked tokens: the tokenizer to decode with if not "
                                            "the model folder's own (a VQ-GAN folder or shipped "
                                            "name, a k-means .safetensors file)")
    return parser


def run_command(args, load, sample_fn):
    """The command line of both packages: load, sample, write the PNG and the .npz."""
    if args.per_label < 1:
        print(f"error: --per-label must be at least 1, got {args.per_label}", file=sys.stderr)
        return 2
    try:
        digit_model = load(args.model, tokenizer=args.tokenizer)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    labels = np.repeat(args.labels, args.per_label)
    tic = time.perf_counter()
    images = sample_fn(digit_model, labels, args.seed, args.scheduler, args.steps, args.guidance,
                       args.temperature, args.eta)
    seconds = time.perf_counter() - tic
    save_grid(images, args.out, args.per_label)
    if args.npz:
        save_npz(args.npz, images, labels)
    s = settings(digit_model, args.scheduler, args.steps, args.guidance, args.temperature,
                 args.eta)
    what = (f"{s['scheduler']}, {s['steps']} steps" if digit_model.kind == "diffusion"
            else f"{s['steps']} decoding steps, temperature {s['temperature'][0]}")
    print(f"{len(labels)} digits ({what}, guidance {s['guidance_scale']}) in {seconds:.1f} s -> "
          f"{args.out}" + (f", {args.npz}" if args.npz else ""))
    return 0


def main(argv=None):
    args = build_parser("python -m uvit_numpy.sample").parse_args(argv)
    return run_command(args, load_digit_model, sample_digits)


if __name__ == "__main__":
    sys.exit(main())
