"""Make digits with a shipped (or your own) model, in pure NumPy: `python -m uvit_numpy.sample`.

    python -m uvit_numpy.sample uvit-digits --labels 0,1,2,3,4,5,6,7,8,9 --per-label 8 --seed 0 \\
        --out runs/digits.png --npz runs/digits.npz
    python -m uvit_numpy.sample uvit-digits --scheduler ddim --steps 50 --guidance 3
    python -m uvit_numpy.sample amused-digits --steps 12 --guidance 3 --temperature 2
    python -m uvit_numpy.sample runs/uvit-digits/model          # a folder your training wrote

The first argument is a shipped model's name (`uvit_numpy.pretrained`) or a model folder. The
PNG is a grid with one row per label (default `runs/digits.png`); the .npz holds `images` float32
(N, 28, 28) in [0, 1] and `labels` int64 (N,). Unset options take the model's own defaults (its
config's `_sampling`). A progress bar (one tick per sampling step) goes to standard error.

* uvit-digits (diffusion): `--scheduler` ddpm, ddim or dpmsolver++, `--steps`, `--guidance` (w,
  diffusers' convention: 1 is no guidance; the U-ViT paper's scale s is w - 1), `--eta` (DDIM).
* amused-digits (masked tokens): `--steps` (MaskGIT decoding steps), `--guidance`
  (uncond + w (cond - uncond) on the logits, as aMUSEd, and only above 1), `--temperature` (the
  Gumbel temperature at the first step, annealed to 0).
  The codes are decoded by the tokenizer the model was trained on, which its folder holds
  (`tokenizer.safetensors` for k-means, `vqvae/` for a VQ-GAN); `--tokenizer` names another copy
  of it (a VQ-GAN folder such as `uvit_numpy/pretrained/vqgan-digits`, or a k-means file).

Every argument is checked before any work: an option that does not apply to the model is refused
(`--temperature` with a diffusion model, `--scheduler` or `--eta` with a masked-token one, `--eta`
with a sampler other than DDIM), counts must be positive, guidance and temperature non-negative,
and the files must be writable. `--guidance` below 1 is allowed (diffusers allows it) but said:
for diffusion it is *less* than no guidance (w = 0 samples unconditionally and ignores the
labels; 0 < w < 1 pulls the samples away from their labels), for masked tokens it is no
guidance at all (aMUSEd guides only above 1). `--threads` (default 1: measured fastest for this
small work, see `uvit_numpy.cli`).

The library functions (`load_digit_model`, `sample_digits`, `save_grid`) take and return arrays,
so the book uses them without the command line; `uvit_torch.sample` is the same with torch.
"""

import argparse
import difflib
import os
import sys
import time

import numpy as np

from .cli import (
    ArgumentParser,
    CommandError,
    add_threads_argument,
    non_negative_float,
    non_negative_int,
    output_file_with,
    positive_int,
    progress_bar,
    run_main,
    set_threads,
)
from .schedulers import SCHEDULERS
from .weights import CONFIG_NAME, find_model_folder, read_config

SCHEDULER_NAMES = tuple(SCHEDULERS)              # the registry's names
SAMPLE_MODELS = ("uvit-digits", "amused-digits")  # the shipped models this command draws from
RUN_FILES = ("checkpoint.safetensors", "log.csv")  # what tells a trainer's run folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".pdf", ".svg")
# the sampling settings' names in messages: a library caller's keywords, or the command's options
KEYWORDS = {k: k for k in ("scheduler", "steps", "guidance_scale", "temperature", "eta")}
OPTIONS = {"scheduler": "--scheduler", "steps": "--steps", "guidance_scale": "--guidance",
           "temperature": "--temperature", "eta": "--eta"}


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


class UnknownModel(ValueError):
    """The model argument is neither a shipped model's name nor a path that exists."""


def resolve_folder(name_or_path):
    """A shipped model's folder by name, or the given folder (a run's `model/`, say).

    Raises UnknownModel for a name that is neither (listing the shipped ones), FileNotFoundError
    for a folder that holds no model (a trainer's run folder is pointed at its `model/`)."""
    from . import pretrained
    if name_or_path in pretrained.NAMES:
        return pretrained.path(name_or_path)
    if not os.path.exists(name_or_path):
        close = difflib.get_close_matches(name_or_path, SAMPLE_MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownModel(f"{name_or_path!r} is not a shipped model ({', '.join(SAMPLE_MODELS)}) "
                           f"nor a folder{hint}")
    if not os.path.isdir(name_or_path):
        raise FileNotFoundError(f"{name_or_path!r} is a file; expected a shipped model "
                                f"({', '.join(SAMPLE_MODELS)}) or a model folder (config.json "
                                f"and safetensors weights)")
    if not os.path.isfile(os.path.join(name_or_path, CONFIG_NAME)):
        model = os.path.join(name_or_path, "model")
        if os.path.isfile(os.path.join(model, CONFIG_NAME)):
            raise FileNotFoundError(f"{name_or_path!r} is a training run's folder: its model is "
                                    f"in {model!r} (pass that)")
        if any(os.path.isfile(os.path.join(name_or_path, f)) for f in RUN_FILES):
            raise FileNotFoundError(
                f"{name_or_path!r} is a training run's folder without its model/ yet (written "
                f"at the end of training): write it from the latest checkpoint with "
                f"`python -m uvit_torch.train CONFIG --out {name_or_path} --export`")
    return find_model_folder(name_or_path)


def folder_info(folder):
    """(kind, training info, sampling defaults) from a model folder's config.json; a ValueError
    naming the file if it is not a digit model of this project's trainers."""
    config = read_config(folder)
    where = os.path.join(folder, CONFIG_NAME)
    training, sampling = config.get("_training"), config.get("_sampling")
    if not isinstance(training, dict) or not isinstance(sampling, dict):
        raise ValueError(f"{folder!r} holds no digit model of this project's trainers: its "
                         f"config.json has no _training/_sampling entries")
    kind = {"UViT": "diffusion", "UVit2DModel": "maskgit"}.get(config.get("_class_name"))
    if kind is None:
        raise ValueError(f"{folder!r}: expected a UViT or UVit2DModel folder, got _class_name "
                         f"{config.get('_class_name')!r}")
    needed = (("config", "model", "num_classes"), ("config", "model", "in_chans"),
              ("config", "diffusion")) if kind == "diffusion" else \
        (("config", "num_classes"), ("config", "micro_conds"))
    for keys in needed:
        entry = training
        for key in keys:
            if not isinstance(entry, dict) or key not in entry:
                raise ValueError(f"{where!r}: _training has no entry {'.'.join(keys)!r}")
            entry = entry[key]
    for key in ("steps", "guidance_scale") + (("scheduler",) if kind == "diffusion"
                                              else ("temperature",)):
        if key not in sampling:
            raise ValueError(f"{where!r}: _sampling has no entry {key!r}")
    if kind == "diffusion":
        model_cfg = training["config"]["model"]
        if model_cfg["num_classes"] < 2:
            raise ValueError(f"{folder!r} holds an unconditional model (num_classes "
                             f"{model_cfg['num_classes']}); this command draws labelled digits")
        if model_cfg["in_chans"] != 1:
            raise ValueError(f"{folder!r} holds a model of {model_cfg['in_chans']}-channel "
                             f"images; this command draws grey digits (in_chans 1)")
    return kind, training, sampling


def describe(name_or_path):
    """The DigitModel of a name or folder without its weights (`model` None): enough to check
    the sampling settings before anything is loaded."""
    folder = resolve_folder(name_or_path)
    kind, training, sampling = folder_info(folder)
    return DigitModel(kind, None, training, sampling, folder=folder)


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
             eta=None, names=KEYWORDS):
    """The sampling settings: the given ones, the model's defaults for the rest.

    Raises a ValueError (naming the setting as in `names`: the keywords, or the command's
    `OPTIONS`) for a setting out of range or one that does not apply to this model or sampler.
    """
    diffusion = digit_model.kind == "diffusion"
    kind = "a diffusion model" if diffusion else "a masked-token model"
    if temperature is not None and diffusion:
        raise ValueError(f"{names['temperature']} applies to masked-token models "
                         f"(amused-digits); this is {kind} (its settings: {names['scheduler']}, "
                         f"{names['steps']}, {names['guidance_scale']}, {names['eta']})")
    for key, value in (("scheduler", scheduler), ("eta", eta)):
        if value is not None and not diffusion:
            raise ValueError(f"{names[key]} applies to diffusion models (uvit-digits); this is "
                             f"{kind} (its settings: {names['steps']}, "
                             f"{names['guidance_scale']}, {names['temperature']})")
    s = dict(digit_model.sampling)
    given = {"scheduler": scheduler, "steps": steps, "guidance_scale": guidance_scale,
             "temperature": temperature, "eta": eta}
    s.update({k: v for k, v in given.items() if v is not None})
    s.setdefault("eta", 0.0)
    if isinstance(s["steps"], bool) or not isinstance(s["steps"], (int, np.integer)) \
            or s["steps"] < 1:
        raise ValueError(f"{names['steps']}: expected a positive integer, got {s['steps']!r}")
    if not s["guidance_scale"] >= 0:
        raise ValueError(f"{names['guidance_scale']}: expected a guidance scale >= 0 (1 is no "
                         f"guidance), got {s['guidance_scale']}")
    if diffusion:
        if s["scheduler"] not in SCHEDULER_NAMES:
            raise ValueError(f"{names['scheduler']}: expected one of {SCHEDULER_NAMES}, got "
                             f"{s['scheduler']!r}")
        T = digit_model.training["config"]["diffusion"]["num_train_timesteps"]
        if s["steps"] > T:
            raise ValueError(f"{names['steps']}: expected at most the {T} training timesteps, "
                             f"got {s['steps']}")
        if eta is not None and not SCHEDULERS[s["scheduler"]].takes_eta:
            raise ValueError(f"{names['eta']} is DDIM's noise weight (--scheduler ddim); the "
                             f"sampler here is {s['scheduler']}")
        if not 0.0 <= s["eta"] <= 1.0:
            raise ValueError(f"{names['eta']}: expected DDIM's noise weight in [0, 1] (0: "
                             f"deterministic, 1: DDPM's variance), got {s['eta']}")
    else:
        if isinstance(s.get("temperature"), (int, float)):
            s["temperature"] = (float(s["temperature"]), 0.0)   # one number: anneal it to 0
        if min(s["temperature"]) < 0:
            raise ValueError(f"{names['temperature']}: expected a temperature >= 0, got "
                             f"{s['temperature'][0]}")
    return s


def settings_warnings(digit_model, s, names=KEYWORDS):
    """One-line notes on legal but surprising settings `s` (from `settings`): a guidance scale
    below 1, which diffusers allows, means less than no guidance."""
    w, name = s["guidance_scale"], names["guidance_scale"]
    if w >= 1.0:
        return []
    if digit_model.kind != "diffusion":
        return [f"{name} {w:g} is no guidance for masked tokens (aMUSEd guides only above 1): "
                f"plain conditional sampling, the same as {name} 1"]
    if w == 0.0:
        return [f"{name} 0 samples unconditionally (the null class): the labels are ignored, "
                f"and the digits are of no class asked for"]
    return [f"{name} {w:g} is less than no guidance (1): it moves the samples toward the "
            f"unconditional model, away from their labels"]


def check_labels(digit_model, labels, name="labels"):
    """ValueError unless every label is a class of the model, 0 .. num_classes - 1."""
    labels = np.asarray(labels)
    n = digit_model.num_classes
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected a non-empty (N,) array of integers, got "
                         f"{labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= n:
        raise ValueError(f"{name}: this model knows classes 0 .. {n - 1}, got "
                         f"{sorted(set(labels[(labels < 0) | (labels >= n)].tolist()))}")


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
                  temperature=None, eta=None, batch_size=250, progress=False):
    """Digits of the given labels (N,) ints in [0, 10): images (N, 28, 28) float32 in [0, 1].

    Diffusion: `sampling.sample` with the chosen scheduler; masked tokens: `maskgit.generate`
    then the tokenizer's decode. Batches of `batch_size` labels, each seeded from (seed, batch).
    progress: show a progress bar on standard error, one tick per sampling step of each batch.
    """
    from . import schedulers
    from .data import to_unit
    from .maskgit import generate
    from .sampling import sample
    labels = np.asarray(labels, dtype=np.int64)
    check_labels(digit_model, labels)
    s = settings(digit_model, scheduler, steps, guidance_scale, temperature, eta)
    batches = range(0, len(labels), batch_size)
    out = []
    with progress_bar(len(batches) * s["steps"], os.path.basename(digit_model.folder or "sample"),
                      enabled=progress) as bar:
        def tick(step, x):
            bar.update(1)
        for b, start in enumerate(batches):
            part = labels[start:start + batch_size]
            batch_seed = [seed, b]
            if digit_model.kind == "diffusion":
                sched = make_scheduler(s["scheduler"],
                                       digit_model.training["config"]["diffusion"], schedulers)
                x = sample(digit_model.model, part, sched, s["steps"], s["guidance_scale"],
                           seed=batch_seed, eta=s["eta"], callback=tick)
                out.append(to_unit(x[:, 0]))
            else:
                cfg = digit_model.training["config"]
                ehs, pooled, neg_ehs, neg_pooled, micro = maskgit_conditions(
                    part, cfg["num_classes"], cfg["micro_conds"], digit_model.model.dtype)
                g = digit_model.tokenizer.grid
                codes = generate(digit_model.model, ehs, pooled, micro, g, g,
                                 num_steps=s["steps"], temperature=tuple(s["temperature"]),
                                 guidance_scale=s["guidance_scale"],
                                 negative_encoder_hidden_states=neg_ehs,
                                 negative_pooled_text_emb=neg_pooled,
                                 rng=np.random.default_rng(batch_seed), callback=tick)
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
    """A PNG of the digits, `per_row` to a row, white on black (matplotlib's imsave; the format
    follows the file name's suffix)."""
    from matplotlib.image import imsave  # no pyplot, no GUI backend needed
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    imsave(path, grid_image(images, per_row), cmap="gray", vmin=0.0, vmax=1.0)


def save_npz(path, images, labels):
    """`images` float32 (N, 28, 28) and `labels` int64 (N,) in a compressed .npz."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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


def image_file(text):
    """argparse type: a picture file matplotlib can write (by its suffix), in a writable place."""
    return output_file_with(*IMAGE_SUFFIXES)(text)


def build_parser(prog):
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="uvit-digits, amused-digits, amused-vqgan-digits, or a "
                                      "model folder")
    parser.add_argument("--labels", type=parse_labels, default=parse_labels("0,1,2,3,4,5,6,7,8,9"),
                        help="comma-separated digits, one row each (default 0,1,...,9)")
    parser.add_argument("--per-label", type=positive_int, default=8,
                        help="digits per label (default 8)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=image_file, default="runs/digits.png",
                        help="PNG grid (default runs/digits.png)")
    parser.add_argument("--npz", type=output_file_with(".npz"),
                        help="also write images and labels to this .npz")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="diffusion sampler")
    parser.add_argument("--steps", type=positive_int, help="sampling steps")
    parser.add_argument("--guidance", type=non_negative_float,
                        help="guidance scale w (1: none; below 1: less than none)")
    parser.add_argument("--eta", type=non_negative_float,
                        help="DDIM's noise weight in [0, 1] (default 0)")
    parser.add_argument("--temperature", type=non_negative_float,
                        help="masked tokens: first-step temperature")
    parser.add_argument("--tokenizer", help="masked tokens: the tokenizer to decode with if not "
                                            "the model folder's own (a VQ-GAN folder or shipped "
                                            "name, a k-means .safetensors file)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_command(parser, args, labels=None):
    """Everything about the arguments that needs the model's config (not its weights): returns
    (the DigitModel without weights, the settings), after printing any warning; a usage error
    (exit status 2) for a bad combination, a `CommandError` (status 1) for a broken folder.
    args: the parsed `model`, `scheduler`, `steps`, `guidance`, `temperature`, `eta` (and
    `labels`, unless given)."""
    try:
        probe = describe(args.model)
    except UnknownModel as err:
        parser.error(str(err))
    except (OSError, ValueError, TypeError) as err:
        raise CommandError(str(err)) from None
    try:
        check_labels(probe, args.labels if labels is None else labels, "--labels")
        s = settings(probe, args.scheduler, args.steps, args.guidance, args.temperature,
                     args.eta, names=OPTIONS)
    except ValueError as err:
        parser.error(str(err))
    tokenizer = getattr(args, "tokenizer", None)
    if tokenizer is not None and probe.kind == "diffusion":
        parser.error(f"--tokenizer: {args.model} is a diffusion model, which makes pixels; a "
                     f"tokenizer is only for masked-token models")
    if tokenizer is not None and not _names_a_tokenizer(tokenizer):
        parser.error(f"--tokenizer: expected a shipped VQ-GAN (vqgan-digits), a VQ-GAN folder "
                     f"or a k-means .safetensors file, got {tokenizer!r} (no such file or "
                     f"folder)")
    for line in settings_warnings(probe, s, OPTIONS):
        print(f"warning: {line}", file=sys.stderr)
    return probe, s


def _names_a_tokenizer(name):
    """Whether `--tokenizer` names something that exists: a shipped model or a path."""
    from . import pretrained
    return name in pretrained.NAMES or os.path.exists(name)


def load_or_fail(load, folder):
    """`load(folder)`, a damaged folder turned into a one-line `CommandError`."""
    try:
        return load(folder)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CommandError(f"cannot load the model in {folder!r}: {err}") from None


def run_command(parser, args, load, sample_fn, torch=False):
    """The command line of both packages: check, load, sample, write the PNG and the .npz."""
    probe, s = check_command(parser, args)
    labels = np.repeat(args.labels, args.per_label)
    with set_threads(args.threads, torch=torch):
        digit_model = load_or_fail(lambda folder: load(folder, tokenizer=args.tokenizer),
                                   probe.folder)
        tic = time.perf_counter()
        images = sample_fn(digit_model, labels, args.seed, args.scheduler, args.steps,
                           args.guidance, args.temperature, args.eta,
                           progress=not args.no_progress)
        seconds = time.perf_counter() - tic
    try:
        save_grid(images, args.out, args.per_label)
        if args.npz:
            save_npz(args.npz, images, labels)
    except OSError as err:
        raise CommandError(f"cannot write {err.filename or args.out!r}: {err.strerror or err}") \
            from None
    what = (f"{s['scheduler']}, {s['steps']} steps" if digit_model.kind == "diffusion"
            else f"{s['steps']} decoding steps, temperature {s['temperature'][0]}")
    print(f"{len(labels)} digits ({what}, guidance {s['guidance_scale']}) in {seconds:.1f} s -> "
          f"{args.out}" + (f", {args.npz}" if args.npz else ""))
    return 0


def main(argv=None):
    parser = build_parser("python -m uvit_numpy.sample")
    args = parser.parse_args(argv)
    return run_main(run_command, parser, args, load_digit_model, sample_digits)


if __name__ == "__main__":
    sys.exit(main())
