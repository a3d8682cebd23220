"""Judge a digit model by numbers: `python -m uvit_torch.evaluate uvit-digits`.

    python -m uvit_torch.evaluate uvit-digits                 # 100 digits per class, defaults
    python -m uvit_torch.evaluate amused-digits --guidance 5 --json report.json
    python -m uvit_torch.evaluate runs/uvit-digits/model --backend numpy
    python -m uvit_torch.evaluate --tokenizers vqgan-digits amused-digits --json table.json
    python -m uvit_torch.evaluate --train-classifier uvit_numpy/pretrained/digit-classifier

Every argument is checked before any sampling, as `python -m uvit_numpy.sample` checks its own
(the same sampling options and rules). `--threads` (default 1, see `uvit_numpy.cli`) sets
torch's threads and NumPy's BLAS's; a progress bar of the sampling goes to standard error.

Three measurements, on `--per-class` samples of every class, none of which needs Inception
weights or the internet (the spec's offline protocol):

1. **Class accuracy**: a small CNN trained on the training split (the shipped
   `digit-classifier`) names the digit in each sample; the share that is the intended class,
   overall and per class. Its accuracy on the held-out real digits is the ceiling.
2. **Frechet distance** between the samples and the 500 held-out digits in that classifier's
   64-d feature space (mean and covariance of each set; FD = |mu1 - mu2|^2 + tr(S1 + S2 -
   2 (S1 S2)^1/2)), printed next to the same distance between as many *training* digits and
   the held-out ones: FD depends on the sample sizes, so only the ratio means something.
3. **Memorisation**: each sample's pixel distance to its nearest training digit, against the same
   for the held-out digits (which the model never saw). Samples much closer to the training set
   than real unseen digits are would be copies.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from uvit_numpy.cli import (
    ArgumentParser,
    CommandError,
    add_threads_argument,
    non_negative_float,
    non_negative_int,
    output_file_with,
    output_folder,
    positive_int,
    run_main,
    set_threads,
)
from uvit_numpy.data import load_digits, to_unit
from uvit_numpy.sample import SCHEDULER_NAMES
from uvit_numpy.weights import read_config

FEATURES = 64


class DigitClassifier(nn.Module):
    """conv 3x3 (16) - ReLU - pool - conv 3x3 (32) - ReLU - pool - linear 64 - ReLU - linear 10.

    x: (B, 28, 28) or (B, 1, 28, 28) in [0, 1]. `features(x)` is the 64-d layer before the last,
    the space the Frechet distance is measured in."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, FEATURES)
        self.fc2 = nn.Linear(FEATURES, 10)

    def features(self, x):
        x = x.reshape(-1, 1, 28, 28)
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)     # (B, 16, 14, 14)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)     # (B, 32, 7, 7)
        return torch.relu(self.fc1(x.flatten(1)))                       # (B, 64)

    def forward(self, x):
        return self.fc2(self.features(x))


def _shifted(x, rng):
    """Each image moved by up to 2 pixels in each direction (zero fill): the augmentation."""
    out = np.zeros_like(x)
    for i, (dy, dx) in enumerate(rng.integers(-2, 3, size=(len(x), 2))):
        src = x[i, max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def train_classifier(epochs=10, batch_size=64, lr=1e-3, seed=0, log=print):
    """Train the classifier on the training split ([0, 1] digits, random shifts), seeded.
    Returns (model in eval mode, held-out accuracy)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = load_digits("train")
    x, y = to_unit(images).astype(np.float32), torch.from_numpy(labels)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb = torch.from_numpy(_shifted(x[idx], rng))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        log(f"classifier epoch {epoch + 1}/{epochs}: last loss {loss.item():.3f}")
    model.eval()
    return model, held_out_accuracy(model)


@torch.no_grad()
def predict(classifier, images):
    """(labels (N,), features (N, 64)) for images (N, 28, 28) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    feats = torch.cat([classifier.features(x[i:i + 500]) for i in range(0, len(x), 500)])
    return classifier.fc2(feats).argmax(-1).numpy(), feats.double().numpy()


def held_out_accuracy(classifier):
    images, labels = load_digits("held_out")
    return float(np.mean(predict(classifier, to_unit(images))[0] == labels))


def save_classifier(model, folder, info):
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "DigitClassifier", "_training": info}, f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def load_classifier(folder=None):
    """The shipped classifier (or the one in `folder`), in eval mode."""
    from safetensors.torch import load_file

    from uvit_numpy import pretrained
    folder = folder or pretrained.path("digit-classifier")
    if read_config(folder).get("_class_name") != "DigitClassifier":
        raise ValueError(f"{folder!r} holds no DigitClassifier")
    model = DigitClassifier()
    model.load_state_dict(load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")))
    return model.eval()


# --------------------------------------------------------------------------------------------------
# The three measurements
# --------------------------------------------------------------------------------------------------
def frechet_distance(a, b):
    """The Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    import warnings

    from scipy import linalg
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():            # a ReLU feature that is always 0 makes S1 S2
        warnings.simplefilter("ignore")        # singular; its square root is still well defined
        covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean  # rounding's tiny imaginary
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean))


def nearest_distances(images, reference):
    """For every image (N, 28, 28), the pixel L2 distance to its nearest image in `reference`."""
    a = images.reshape(len(images), -1).astype(np.float64)
    r = reference.reshape(len(reference), -1).astype(np.float64)
    d = np.sum(a * a, 1)[:, None] - 2.0 * (a @ r.T) + np.sum(r * r, 1)[None, :]
    return np.sqrt(np.maximum(d.min(axis=1), 0.0))


def balanced_subset(images, labels, per_class, seed=1):
    """`per_class` images of each class, drawn at random (the real-vs-real reference set)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                          for c in range(10)])
    return images[idx], labels[idx]


def evaluate_images(images, labels, classifier=None):
    """The report for generated `images` (N, 28, 28) in [0, 1] of intended `labels` (N,)."""
    classifier = classifier or load_classifier()
    train_x, train_y = load_digits("train")
    held_x, held_y = load_digits("held_out")
    train_x, held_x = to_unit(train_x), to_unit(held_x)
    pred, feats = predict(classifier, images)
    held_pred, held_feats = predict(classifier, held_x)
    per_class = len(images) // 10
    ref_x, _ = balanced_subset(train_x, train_y, min(per_class, 450))
    _, ref_feats = predict(classifier, ref_x)
    fd = frechet_distance(feats, held_feats)
    fd_real = frechet_distance(ref_feats, held_feats)
    sample_nn = nearest_distances(images, train_x)
    held_nn = nearest_distances(held_x, train_x)
    return {
        "samples": int(len(images)),
        "class_accuracy": float(np.mean(pred == labels)),
        "per_class_accuracy": [float(np.mean(pred[labels == c] == c)) for c in range(10)],
        "classifier_held_out_accuracy": float(np.mean(held_pred == held_y)),
        "frechet_distance": fd,
        "frechet_real_vs_real": fd_real,
        "frechet_ratio": fd / fd_real,
        "nearest_train_distance_median": float(np.median(sample_nn)),
        "held_out_nearest_train_distance_median": float(np.median(held_nn)),
        "share_closer_than_any_held_out": float(np.mean(sample_nn < held_nn.min())),
    }


def evaluate_tokenizer(tokenizer, classifier=None):
    """How much of the digits a tokenizer keeps (any object with `encode` (N, 28, 28) -> codes
    (N, h, w) and `decode` back, and `codebook_size`: k-means or a VQ-GAN). Returns a dict:

    * on the 500 held-out digits: `psnr` of their reconstructions, `held_out_class_accuracy` (the
      classifier on them), `paired_frechet_distance` (reconstructions against the originals in
      the classifier's features: the distortion alone, no sampling) and their code statistics;
    * the codes of the 4,500 training digits (what a masked-token model learns): `used`,
      `perplexity` (exp of the codes' entropy), `top_share` (the most frequent code's);
    * `frechet_ratio`: the floor of a masked-token model's Frechet ratio. The 1,000 training
      digits that a 1,000-sample evaluation measures real-vs-real with (`balanced_subset`, 100
      a class) are reconstructed, and their distance to the held-out digits is divided by theirs
      unreconstructed: a model that drew exactly those digits' codes would score this.
    """
    from uvit_numpy.tokenizer import code_statistics, psnr
    classifier = classifier or load_classifier()
    K = tokenizer.codebook_size
    train_x, train_y = load_digits("train")
    held_x, held_y = load_digits("held_out")
    held_codes = tokenizer.encode(held_x)
    held_rec = tokenizer.decode(held_codes)
    pred, feats = predict(classifier, to_unit(held_rec))
    _, held_feats = predict(classifier, to_unit(held_x))
    train_stats = code_statistics(tokenizer.encode(train_x), K)
    held_stats = code_statistics(held_codes, K)
    ref_x, _ = balanced_subset(train_x, train_y, 100)
    ref_rec = to_unit(tokenizer.decode(tokenizer.encode(ref_x)))
    _, ref_feats = predict(classifier, to_unit(ref_x))
    _, ref_rec_feats = predict(classifier, ref_rec)
    fd_rec = frechet_distance(ref_rec_feats, held_feats)
    fd_real = frechet_distance(ref_feats, held_feats)
    return {
        "codebook_size": int(K), "psnr": psnr(held_x, held_rec),
        "held_out_class_accuracy": float(np.mean(pred == held_y)),
        "paired_frechet_distance": frechet_distance(feats, held_feats),
        "used": train_stats["used"], "perplexity": train_stats["perplexity"],
        "top_share": train_stats["top_share"],
        "held_out_used": held_stats["used"], "held_out_perplexity": held_stats["perplexity"],
        "frechet_distance": fd_rec, "frechet_real_vs_real": fd_real,
        "frechet_ratio": fd_rec / fd_real,
    }


TOKENIZER_ROWS = (
    ("psnr", "PSNR of held-out reconstructions, dB", "{:.2f}"),
    ("held_out_class_accuracy", "class accuracy of held-out reconstructions", "{:.3f}"),
    ("paired_frechet_distance", "Frechet distance, held-out reconstructions to originals",
     "{:.2f}"),
    ("used", "codes used (training digits)", "{:d}"),
    ("perplexity", "perplexity of the codes (training digits)", "{:.1f}"),
    ("top_share", "share of the most frequent code", "{:.3f}"),
    ("frechet_ratio", "Frechet ratio of reconstructions (the floor of a masked-token model)",
     "{:.2f}"),
)


def format_tokenizer_table(reports):
    """The tokenizer reports {name: report} side by side, one row per measure."""
    names = list(reports)
    width = max(len(label) for _, label, _ in TOKENIZER_ROWS) + 2
    lines = [" " * width + "".join(f"{n:>16}" for n in names)]
    for key, label, fmt in TOKENIZER_ROWS:
        lines.append(f"{label:<{width}}" + "".join(f"{fmt.format(reports[n][key]):>16}"
                                                   for n in names))
    return "\n".join(lines)


def load_any_tokenizer(name_or_path):
    """A tokenizer by shipped name or path: a VQ-GAN (run in torch, `uvit_torch.tokenizer`) or
    the k-means tokenizer of a masked-token model's folder."""
    from uvit_numpy import pretrained
    from uvit_numpy.tokenizer import VQGANTokenizer, load_tokenizer

    from .tokenizer import VQGANTokenizer as TorchVQGANTokenizer
    path = pretrained.path(name_or_path) if name_or_path in pretrained.NAMES else name_or_path
    tok = load_tokenizer(path)
    return TorchVQGANTokenizer.from_numpy(tok) if isinstance(tok, VQGANTokenizer) else tok


def format_report(r, title):
    accs = " ".join(f"{c}:{a:.2f}" for c, a in enumerate(r["per_class_accuracy"]))
    return "\n".join([
        title,
        f"  class accuracy       {r['class_accuracy']:.3f}   (target >= 0.95; the classifier "
        f"scores {r['classifier_held_out_accuracy']:.3f} on held-out real digits)",
        f"  per class            {accs}",
        f"  Frechet distance     {r['frechet_distance']:.2f}   vs real-vs-real "
        f"{r['frechet_real_vs_real']:.2f} at the same sizes: ratio {r['frechet_ratio']:.2f} "
        f"(target <= 3)",
        f"  memorisation         median distance to the nearest training digit: samples "
        f"{r['nearest_train_distance_median']:.2f}, held-out real digits "
        f"{r['held_out_nearest_train_distance_median']:.2f}; samples closer than every "
        f"held-out digit: {r['share_closer_than_any_held_out']:.1%}",
    ])


def build_parser():
    parser = ArgumentParser(prog="python -m uvit_torch.evaluate",
                            description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="uvit-digits, amused-digits, "
                                                 "amused-vqgan-digits or a model folder")
    parser.add_argument("--per-class", type=positive_int, default=100)
    parser.add_argument("--seed", type=non_negative_int, default=1234,
                        help="sampling seed (default 1234, not the grids' 0)")
    parser.add_argument("--backend", choices=["torch", "numpy"], default="torch")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES)
    parser.add_argument("--steps", type=positive_int)
    parser.add_argument("--guidance", type=non_negative_float)
    parser.add_argument("--temperature", type=non_negative_float)
    parser.add_argument("--eta", type=non_negative_float)
    parser.add_argument("--classifier", help="a classifier folder (default: the shipped one)")
    parser.add_argument("--json", type=output_file_with(".json"),
                        help="also write the report to this JSON file")
    parser.add_argument("--train-classifier", metavar="FOLDER", type=output_folder,
                        help="train the digit classifier (seed 0) into FOLDER instead")
    parser.add_argument("--tokenizers", nargs="+", metavar="NAME",
                        help="judge tokenizers instead, side by side (`evaluate_tokenizer`): "
                             "VQ-GANs (vqgan-digits or a folder) and the k-means tokenizers of "
                             "masked-token models (amused-digits or a folder)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_train_classifier(folder):
    model, acc = train_classifier()
    save_classifier(model, folder, {
        "command": "python -m uvit_torch.evaluate --train-classifier FOLDER", "seed": 0,
        "epochs": 10, "held_out_accuracy": acc, "framework": f"torch {torch.__version__}"})
    print(f"classifier written to {folder}: held-out accuracy {acc:.3f}")
    return 0


def run_evaluation(parser, args):
    from uvit_numpy.sample import check_command, load_or_fail
    labels = np.repeat(np.arange(10), args.per_class)
    probe, s = check_command(parser, args, labels)
    if args.classifier is not None and not os.path.isdir(args.classifier):
        parser.error(f"--classifier: {args.classifier!r} is not a folder (expected one written "
                     f"by --train-classifier; leave it out for the shipped classifier)")
    if args.backend == "numpy":
        from uvit_numpy.sample import load_digit_model, sample_digits
    else:
        from .sample import load_digit_model, sample_digits
    digit_model = load_or_fail(load_digit_model, probe.folder)
    try:
        classifier = load_classifier(args.classifier)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise CommandError(f"cannot load the classifier: {err}") from None
    tic = time.perf_counter()
    images = sample_digits(digit_model, labels, args.seed, args.scheduler, args.steps,
                           args.guidance, args.temperature, args.eta,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - tic
    report = evaluate_images(images, labels, classifier)
    report["sampling_seconds"] = seconds
    report["seconds_per_100"] = 100 * seconds / len(labels)
    report["backend"] = args.backend
    report["threads"] = torch.get_num_threads()
    report["settings"] = s
    report["model"] = args.model
    report["seed"] = args.seed
    print(format_report(report, f"{args.model}: {len(labels)} samples in {seconds:.0f} s "
                                f"({args.backend}), {report['settings']}"))
    if args.json:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        except OSError as err:
            raise CommandError(f"cannot write {args.json!r}: {err.strerror or err}") from None
    return 0


def tokenizer_command(args):
    """`--tokenizers A B ...`: the table of `evaluate_tokenizer`, and the JSON of the reports."""
    try:
        tokenizers = {name: load_any_tokenizer(name) for name in args.tokenizers}
        classifier = load_classifier(args.classifier)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from None
    tic = time.perf_counter()
    reports = {name: evaluate_tokenizer(tok, classifier) for name, tok in tokenizers.items()}
    print(format_tokenizer_table(reports))
    print(f"({time.perf_counter() - tic:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"tokenizers": reports, "command": "python -m uvit_torch.evaluate "
                       "--tokenizers " + " ".join(args.tokenizers)}, f, indent=2)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.train_classifier and not args.model and not args.tokenizers:
        parser.error("expected a model (uvit-digits, amused-digits, amused-vqgan-digits or a "
                     "folder), --tokenizers NAME ..., or --train-classifier FOLDER")
    with set_threads(args.threads, torch=True):
        if args.tokenizers:
            return run_main(tokenizer_command, args)
        if args.train_classifier:
            return run_main(run_train_classifier, args.train_classifier)
        return run_main(run_evaluation, parser, args)


if __name__ == "__main__":
    sys.exit(main())
