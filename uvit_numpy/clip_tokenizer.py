"""CLIP's tokenizer, written out in plain Python: text -> the token ids CLIP's text encoder reads.

aMUSEd (like Stable Diffusion) conditions on CLIP's text encoder, and the encoder reads token ids.
This module turns a prompt into exactly the ids that the installed transformers' `CLIPTokenizer`
gives (transformers 5, which runs HuggingFace's `tokenizers` library underneath), without
importing either of them:

    text ─┬─ 1. added tokens: "<|startoftext|>" / "<|endoftext|>" written in the text become one id
          ├─ 2. normalise: Unicode NFC, every run of white space -> " ", lower-case
          ├─ 3. pre-tokenise: CLIP's regular expression cuts words: "a", "cat", "'s", "1", "!!"
          ├─ 4. bytes as characters: a word's UTF-8 bytes, each drawn as one printable character
          ├─ 5. BPE: merge neighbouring symbols, most frequent pair first; "</w>" ends a word
          └─ 6. ids: <|startoftext|> ... <|endoftext|>, truncated and padded to `max_length`

    tok = CLIPTokenizer.from_pretrained("amused-256/tokenizer")
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True,
              return_tensors="np").input_ids           # (B, S) int64, as diffusers calls it
    tok.decode(ids[0], skip_special_tokens=True)       # back to (lower-cased) text

What transformers 5 does, and so what this module does (read from transformers'
`models/clip/tokenization_clip.py` and the `tokenizers` sources, then checked on every character):
  - No ftfy and no HTML un-escaping. OpenAI's own tokenizer runs `ftfy.fix_text`, un-escapes HTML
    ("&amp;" -> "&") and strips the text; transformers 5 does none of this ("&amp;" stays five
    characters). Its whole clean-up is the normaliser of step 2.
  - "White space" is Unicode's White_Space property (25 characters), not Python's `str.isspace`,
    which also counts the separators U+001C..U+001F.
  - Lower-casing goes character by character: a final capital sigma becomes "σ", never "ς".
  - Letters and numbers are Unicode's general categories L* and N*.
  - The tokenizer folder's `do_lower_case` is ignored (transformers 5 always lower-cases), and
    whatever normaliser or pre-tokeniser a `tokenizer.json` names is ignored too: transformers'
    `CLIPTokenizer` builds its own pipeline and takes only the vocabulary, the merges and the added
    tokens from the file.

Where the two can still differ (measured over all 1,114,112 code points): Python's `unicodedata`
(Unicode 14.0 on Python 3.11, 15.0 on 3.12, 16.0 on 3.14) may be older than the Unicode tables of
`tokenizers` (16.0 for letters, numbers and case), so a letter or digit added to Unicode after
Python's version is not recognised here (9,272 letters and 120 numbers on Python 3.11, in recent
scripts and CJK extensions); and `tokenizers`' NFC uses Unicode 9.0 tables, so text that stacks
two or more combining marks, one of which was added after Unicode 9.0 (about 100, in rare
scripts), can be reordered differently. Everything else (every character Python's Unicode
database knows, in any order) gives the same ids.

The real vocabulary is OpenAI's: `build_clip_vocab` makes `vocab.json` / `merges.txt` from the
merges file `bpe_simple_vocab_16e6.txt.gz` that the `open_clip_torch` wheel ships, exactly as
OpenAI's `SimpleTokenizer` builds its vocabulary (49,408 entries); `write_clip_tokenizer_folder`
writes a folder that transformers and this module both load.
"""

import gzip
import itertools
import json
import os
import unicodedata
import zipfile

import numpy as np

VOCAB_NAME = "vocab.json"                    # the Hub's layout (transformers 4 wrote these four)
MERGES_NAME = "merges.txt"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
TOKENIZER_JSON_NAME = "tokenizer.json"       # transformers 5's `save_pretrained` writes this one

END_OF_WORD = "</w>"                         # CLIP marks the last symbol of every word with it
VERY_LARGE_INTEGER = int(1e30)               # transformers' "no limit" for model_max_length
LARGE_INTEGER = int(1e20)                    # above this, model_max_length counts as "no limit"

CLIP_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"   # OpenAI's merges, shipped by open_clip_torch
CLIP_BPE_ENV = "UVIT_CLIP_BPE"                   # where to find it: the .gz or the wheel itself
CLIP_NUM_MERGES = 49152 - 256 - 2                # OpenAI keeps the first 48,894 merges


# --------------------------------------------------------------------------------------------------
# Step 4 first, since the vocabulary is written in it: bytes as printable characters
# --------------------------------------------------------------------------------------------------
def bytes_to_unicode():
    """The byte -> character table of byte-level BPE (GPT-2's, which CLIP reuses). Returns a dict
    {byte: one-character str} in OpenAI's order: the 188 printable bytes first, then the other
    68 (this order is the order of CLIP's first 256 ids: "!" is id 0, "a" is id 64).

    BPE works on text, but a vocabulary of every Unicode character would be huge, and the merges
    file is a text file split on spaces, so it cannot hold a space, a tab or a control character.
    Byte-level BPE therefore works on UTF-8 *bytes*, and draws each of the 256 bytes as one
    printable, non-space character: the 188 bytes that already are printable (`!`..`~`,
    `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68 (space, control characters, ...) are
    drawn as the characters U+0100, U+0101, ... in byte order. So the space byte 0x20 is "Ġ"
    (U+0120) and "é" (bytes C3 A9) is the two characters "Ã©".
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)    # the next unused character after U+00FF
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def to_byte_chars(word):
    """'café' -> 'cafÃ©': a word's UTF-8 bytes, each drawn as its character (`bytes_to_unicode`)."""
    return "".join(BYTE_TO_CHAR[b] for b in word.encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# The real vocabulary: OpenAI's merges file, from which vocab.json / merges.txt are built
# --------------------------------------------------------------------------------------------------
def find_clip_bpe_file(search=None):
    """The path of CLIP's merges (`bpe_simple_vocab_16e6.txt.gz`, or the `open_clip_torch` wheel
    that holds it), or a FileNotFoundError that says how to get it.

    Looked for, in order: the environment variable UVIT_CLIP_BPE (a path to either file), then in
    each folder of `search` (default: this project's git-ignored `.ci-cache/`, which `.ci/run`
    fills with `pip download --no-deps open_clip_torch -d .ci-cache`) a `bpe_simple_vocab_16e6.txt.gz`
    or an `open_clip_torch-*.whl`. Nothing is downloaded here.
    """
    if os.environ.get(CLIP_BPE_ENV):
        path = os.environ[CLIP_BPE_ENV]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{CLIP_BPE_ENV}={path}: no such file (expected {CLIP_BPE_NAME} "
                                    f"or an open_clip_torch-*.whl)")
        return path
    if search is None:
        search = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               ".ci-cache")]
    for folder in search:
        if os.path.isfile(os.path.join(folder, CLIP_BPE_NAME)):
            return os.path.join(folder, CLIP_BPE_NAME)
        wheels = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                        if n.startswith("open_clip_torch-") and n.endswith(".whl"))
        if wheels:
            return os.path.join(folder, wheels[-1])
    raise FileNotFoundError(
        f"CLIP's merges file {CLIP_BPE_NAME} was not found (looked at ${CLIP_BPE_ENV} and in "
        f"{', '.join(search)}); get it with `pip download --no-deps open_clip_torch -d .ci-cache` "
        f"from the project's root (the wheel holds it), or set {CLIP_BPE_ENV} to the .gz or .whl")


def read_clip_bpe(path):
    """The lines of OpenAI's merges file, from the `.txt.gz` itself or from inside an
    `open_clip_torch` wheel (a zip archive holding `open_clip/bpe_simple_vocab_16e6.txt.gz`)."""
    if path.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.endswith("/" + CLIP_BPE_NAME)]
            if not names:
                raise ValueError(f"read_clip_bpe: {path} holds no {CLIP_BPE_NAME}")
            data = gzip.decompress(wheel.read(names[0]))
    else:
        with gzip.open(path) as f:
            data = f.read()
    return data.decode("utf-8").split("\n")


def build_clip_vocab(path):
    """CLIP's vocabulary, built from its merges file as OpenAI's `SimpleTokenizer` builds it.
    Returns (vocab, merges): vocab {token: id} with 49,408 entries, merges a list of 48,894 pairs.

    The file's first line is a version header; the next 48,894 lines are merges "a b", most
    frequent first (the file has more; OpenAI keeps these so that the vocabulary is 49,408 =
    49,152 + 256). The ids are, in this order:
        0..255        the 256 byte characters, in `bytes_to_unicode`'s order ("!" = 0)
        256..511      the same 256 characters ending a word: "a</w>", ...
        512..49405    one token per merge, the two halves joined: "i n" -> "in"
        49406, 49407  "<|startoftext|>", "<|endoftext|>"
    """
    lines = read_clip_bpe(path)
    if not lines[0].startswith("\"bpe_simple_vocab_16e6.txt#version"):
        raise ValueError(f"build_clip_vocab: {path} does not start with CLIP's version header "
                         f"(got {lines[0][:40]!r})")
    merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1]]
    if len(merges) != CLIP_NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"build_clip_vocab: {path} should hold {CLIP_NUM_MERGES} merges of two "
                         f"symbols after its header")
    byte_chars = list(BYTE_TO_CHAR.values())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars]
    tokens += [left + right for left, right in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("build_clip_vocab: two merges make the same token")
    return vocab, merges


def write_clip_tokenizer_folder(path, folder, model_max_length=77):
    """Write CLIP's tokenizer, built by `build_clip_vocab` from the merges file at `path`, into
    `folder` in the Hub's layout (the files `amused/amused-256` and Stable Diffusion ship in
    `tokenizer/`): vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json. Both
    transformers' `CLIPTokenizer.from_pretrained(folder)` and ours load it. Returns `folder`."""
    vocab, merges = build_clip_vocab(path)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, VOCAB_NAME), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, MERGES_NAME), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(folder, SPECIAL_TOKENS_MAP_NAME), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, **special}
    with open(os.path.join(folder, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return folder


# --------------------------------------------------------------------------------------------------
# Step 2: normalise (transformers 5's whole text clean-up)
# --------------------------------------------------------------------------------------------------
# Unicode's White_Space property: what `\s` means in the regular expressions of `tokenizers`
# (Oniguruma). Python's `str.isspace` says the same, plus U+001C..U+001F, which are not white space.
WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                       "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def is_space(c):
    """True for a white-space character (Unicode White_Space)."""
    return c in WHITESPACE


def is_letter(c):
    """True for a letter: general category L* (the `\\p{L}` of CLIP's regular expression)."""
    return unicodedata.category(c)[0] == "L"


def is_number(c):
    """True for a number: general category N* (`\\p{N}`): digits, "²", "Ⅻ", "½", ..."""
    return unicodedata.category(c)[0] == "N"


def collapse_whitespace(text):
    """Every run of white space becomes one space: 'a \\t\\n b' -> 'a b' (the ends are kept)."""
    out, previous_space = [], False
    for c in text:
        if is_space(c):
            if not previous_space:
                out.append(" ")
            previous_space = True
        else:
            out.append(c)
            previous_space = False
    return "".join(out)


def normalize(text):
    """transformers 5's clean-up of CLIP text: Unicode NFC, white-space runs -> " ", lower-case.

    NFC composes "e" + U+0301 (combining acute) into the one character "é", so the two spellings
    of the same word get the same tokens. Lower-casing is done one character at a time, as
    `tokenizers` does (Python's `str.lower` would spell a final sigma "ς" from context; one
    character at a time it is "σ"), and one character may become two: "İ" -> "i" + U+0307.
    """
    text = unicodedata.normalize("NFC", text)
    text = collapse_whitespace(text)
    return "".join(c.lower() for c in text)


# --------------------------------------------------------------------------------------------------
# Step 3: pre-tokenise with CLIP's regular expression
# --------------------------------------------------------------------------------------------------
# CLIP cuts text with the pattern (tried in this order at every position; spaces are dropped):
#     <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
# and transformers then cuts every piece again with GPT-2's pattern (part of its byte-level step).
# That second cut changes one thing only: the words "<|startoftext|>" and "<|endoftext|>", which
# the first alternative keeps whole, become "<|", "startoftext", "|>". (They still count: the
# first alternative stops "|>" from running on into the punctuation after it.) This only happens
# to such a word spelled differently from its added token, e.g. "<|ENDOFTEXT|>": the exact
# spelling was taken out as one id in step 1.
# Python's `re` has no \p{L}, hence a scanner rather than a regular expression.
SPECIAL_WORDS = {"<|startoftext|>": ["<|", "startoftext", "|>"],
                 "<|endoftext|>": ["<|", "endoftext", "|>"]}
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def split_words(text):
    """Cut normalised text into CLIP's words. Returns a list of str.

    At each position, the first alternative that matches wins:
      0. "<|startoftext|>" or "<|endoftext|>" (after lower-casing): the words "<|", "startoftext",
         "|>" (see above),
      1. an English contraction: 's 't 're 've 'm 'll 'd ("don't" -> "don", "'t"; "'sam" -> "'s",
         "am", since the text is already lower-case and the pattern does not look further),
      2. a run of letters ("cat", "café", "東京"),
      3. ONE number character: "2024" -> "2", "0", "2", "4",
      4. a run of anything else that is not white space ("!!", "...", "🙂🙂"; "&amp;" -> "&",
         "amp", ";"),
    and white space between words is dropped.
    """
    words, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if is_space(c):                                         # spaces separate, never kept
            i += 1
            continue
        special = next((w for w in SPECIAL_WORDS if text.startswith(w, i)), None)
        if special is not None:                                 # 0: "<|", "endoftext", "|>"
            words.extend(SPECIAL_WORDS[special])
            i += len(special)
            continue
        contraction = next((w for w in CONTRACTIONS if text.startswith(w, i)), None)
        if contraction is not None:                             # 1: 's 't 're 've 'm 'll 'd
            j = i + len(contraction)
        elif is_letter(c):                                      # 2: a run of letters
            j = i + 1
            while j < n and is_letter(text[j]):
                j += 1
        elif is_number(c):                                      # 3: a single number character
            j = i + 1
        else:                                                   # 4: a run of other characters
            j = i + 1
            while j < n and not (is_space(text[j]) or is_letter(text[j]) or is_number(text[j])):
                j += 1
        words.append(text[i:j])
        i = j
    return words


# --------------------------------------------------------------------------------------------------
# Step 5: byte-pair encoding of one word
# --------------------------------------------------------------------------------------------------
def word_symbols(word, vocab, unk_token):
    """The starting symbols of a word: one per byte character, the last one ending in "</w>", and
    the unknown token for a symbol the vocabulary lacks. 'cat' -> ('c', 'a', 't</w>').

    (The real CLIP vocabulary holds all 512 single symbols, so the unknown token only ever appears
    with a smaller vocabulary; as in `tokenizers`, each unknown symbol is its own unknown token.)
    """
    chars = to_byte_chars(word)
    symbols = list(chars[:-1]) + [chars[-1] + END_OF_WORD]
    if unk_token is None:                     # with no unknown token, `tokenizers` drops them
        return tuple(s for s in symbols if s in vocab)
    return tuple(s if s in vocab else unk_token for s in symbols)


def merge_pair(symbols, pair):
    """Replace every occurrence of the neighbours `pair` = (left, right), scanning left to right,
    by the one symbol left + right. ('a', 'a', 'a'), ('a', 'a') -> ('aa', 'a')."""
    left, right = pair
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def bpe(symbols, ranks):
    """Byte-pair encoding of one word: a tuple of symbols -> a tuple of (fewer, longer) symbols.

    ranks: {(left, right): rank}, rank 0 for the first line of merges.txt, the pair that was most
    frequent when the vocabulary was learnt. Repeat: among all neighbouring pairs of the word,
    take the one with the lowest rank and merge it everywhere; stop when no pair is in `ranks`.

        ('l', 'o', 'w', 'e', 'r</w>') -> ... -> ('lower</w>',)      (if those merges are known)

    `tokenizers` runs the same rule with a priority queue of (rank, position), one position at a
    time. The two agree whenever every merge's two halves are made by earlier merges (or are
    single symbols) and no two merges make the same symbol, as in CLIP's merges: then a pair that
    a merge creates always ranks after it, so nothing can cut in before all its occurrences are
    merged.
    """
    while len(symbols) > 1:
        pairs = itertools.pairwise(symbols)                  # (s0, s1), (s1, s2), ...
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break                                     # no neighbouring pair can be merged
        symbols = merge_pair(symbols, best)
    return symbols


# --------------------------------------------------------------------------------------------------
# Step 1: added tokens, matched in the text before anything else
# --------------------------------------------------------------------------------------------------
class AddedToken:
    """A token matched as a whole in the text before normalisation and BPE, with `tokenizers`'
    flags: `normalized` (match it in the normalised text, not the raw one), `lstrip`/`rstrip`
    (swallow the white space on its left/right), `single_word` (only between non-word characters),
    `special` (dropped by `decode(skip_special_tokens=True)`). CLIP's folders add "<|startoftext|>"
    and "<|endoftext|>" this way (and a folder whose pad token is "!" adds "!")."""

    def __init__(self, content, single_word=False, lstrip=False, rstrip=False, normalized=None,
                 special=False):
        self.content = content
        self.single_word, self.lstrip, self.rstrip = single_word, lstrip, rstrip
        self.special = special
        # as in `tokenizers`: unless told, a special token is matched in the raw text
        self.normalized = (not special) if normalized is None else normalized

    @classmethod
    def from_json(cls, value, special=None):
        """From a folder's JSON: a plain string or a dict {"content": ..., flags}."""
        if isinstance(value, str):
            return cls(value, special=bool(special))
        flags = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
                 if k in value}
        if special is not None:
            flags["special"] = special
        return cls(value["content"], **flags)

    def _fields(self):
        return (self.content, self.single_word, self.lstrip, self.rstrip, self.normalized,
                self.special)

    def __eq__(self, other):               # as `tokenizers` compares them: every field
        return isinstance(other, AddedToken) and self._fields() == other._fields()

    __hash__ = None

    def __repr__(self):
        return (f"AddedToken({self.content!r}, normalized={self.normalized}, "
                f"special={self.special})")


def _is_word_char(c):
    """A word character for the `single_word` flag of added tokens: close to `\\w` of the Rust
    regex crate, which `tokenizers` uses (letters, marks, decimal digits, letter numbers,
    connectors; the crate also counts a few symbols such as "Ⓐ" as letters)."""
    return unicodedata.category(c) in ("Nd", "Nl", "Pc") or unicodedata.category(c)[0] in "LM"


def split_on_added_tokens(text, tokens):
    """Cut `text` at every occurrence of an added token. tokens: {pattern: (AddedToken, id)}.
    Returns a list of (piece, id): id is the token's id for an added token, None for plain text.

    At each step the leftmost occurrence wins, and among those starting there the longest
    ("leftmost-longest", as `tokenizers`' Aho-Corasick automaton matches). A `single_word` token
    glued to a word character is not a match; `lstrip`/`rstrip` widen a match over white space.
    """
    pieces, start, search = [], 0, 0
    while tokens and search < len(text):
        found = [(text.find(p, search), -len(p), p) for p in tokens]
        found = [f for f in found if f[0] >= 0]
        if not found:
            break
        begin, neg_length, pattern = min(found)
        end = begin - neg_length
        token, token_id = tokens[pattern]
        search = end                            # matches never overlap; the next search goes on
        if token.single_word and ((begin > 0 and _is_word_char(text[begin - 1]))
                                  or (end < len(text) and _is_word_char(text[end]))):
            continue
        if token.lstrip:
            while begin > start and is_space(text[begin - 1]):
                begin -= 1
        if token.rstrip:
            while end < len(text) and is_space(text[end]):
                end += 1
        if begin > start:
            pieces.append((text[start:begin], None))
        pieces.append((text[begin:end], token_id))
        start = search = end
    if start < len(text) or not pieces:
        pieces.append((text[start:], None))
    return pieces


# --------------------------------------------------------------------------------------------------
# Reading a tokenizer folder
# --------------------------------------------------------------------------------------------------
def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_merges_txt(path):
    """merges.txt -> a list of (left, right): one merge per line, a '#version' header skipped."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")          # only "\n" ends a line (U+0085 is not an end)
    if lines[-1] == "":
        lines.pop()
    merges = []
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}, line {number}: expected a merge 'left right', "
                             f"got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _named_token(value, special=None):
    """A special token as a tokenizer_config.json / special_tokens_map.json names it: a string,
    or a dict {"content": ..., flags} (with "__type": "AddedToken" in older configs). As in
    transformers, a special_tokens_map.json dict is made special (`special=True`), which also
    makes it match the raw text unless it says "normalized"; a config dict keeps its fields."""
    if isinstance(value, dict):
        return AddedToken.from_json(value, special=special)
    return value


def read_tokenizer_folder(folder):
    """Read a CLIP tokenizer folder in either layout. Returns the keyword arguments of
    `CLIPTokenizer(...)`: vocab, merges, added_tokens, the four special tokens, model_max_length,
    padding_side, truncation_side.

    Layouts: the Hub's (vocab.json + merges.txt, with special_tokens_map.json and
    tokenizer_config.json) and transformers 5's `save_pretrained` (tokenizer.json +
    tokenizer_config.json). When both are present, tokenizer.json wins, as in transformers. The
    special tokens and their flags are read as transformers reads them: tokenizer_config.json's
    `added_tokens_decoder` if it has one; otherwise special_tokens_map.json overrides the
    config's names, and tokenizer.json's `added_tokens` list the added tokens.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"CLIPTokenizer.from_pretrained: {folder} is not a folder")

    def path(name):
        return os.path.join(folder, name)

    def has(name):
        return os.path.isfile(path(name))

    config = _read_json(path(TOKENIZER_CONFIG_NAME)) if has(TOKENIZER_CONFIG_NAME) else {}

    tokenizer_json = None
    if has(TOKENIZER_JSON_NAME):
        tokenizer_json = _read_json(path(TOKENIZER_JSON_NAME))
        model = tokenizer_json.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
            raise ValueError(f"{path(TOKENIZER_JSON_NAME)}: expected a BPE model with a vocab "
                             f"and merges, got model type {model.get('type')!r}")
        vocab = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
    elif has(VOCAB_NAME) and has(MERGES_NAME):
        vocab = _read_json(path(VOCAB_NAME))
        merges = read_merges_txt(path(MERGES_NAME))
    else:
        missing = [n for n in (VOCAB_NAME, MERGES_NAME) if not has(n)]
        raise FileNotFoundError(
            f"CLIPTokenizer.from_pretrained: {folder} has no {TOKENIZER_JSON_NAME} and no "
            f"{' and no '.join(missing)} (a CLIP tokenizer folder holds {TOKENIZER_JSON_NAME}, "
            f"or {VOCAB_NAME} + {MERGES_NAME})")

    named = {k: _named_token(config[k]) for k in ("bos_token", "eos_token", "unk_token",
                                                   "pad_token") if config.get(k) is not None}
    added = []
    if "added_tokens_decoder" in config:
        for token_id, value in sorted(config["added_tokens_decoder"].items(),
                                      key=lambda item: int(item[0])):
            added.append((AddedToken.from_json(value), int(token_id)))
    else:
        if has(SPECIAL_TOKENS_MAP_NAME):
            for key, value in _read_json(path(SPECIAL_TOKENS_MAP_NAME)).items():
                if key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                    named[key] = _named_token(value, special=True)
        if tokenizer_json is not None:
            for value in tokenizer_json.get("added_tokens") or []:
                added.append((AddedToken.from_json(value), value.get("id")))
    # a named special token takes the flags its added token has
    by_content = {token.content: token for token, _ in added}
    for key, value in named.items():
        named[key] = by_content.get(str(getattr(value, "content", value)), value)

    model_max_length = config.get("model_max_length")
    return dict(vocab=vocab, merges=merges, added_tokens=added, **named,
                model_max_length=VERY_LARGE_INTEGER if model_max_length is None
                else int(model_max_length),
                padding_side=config.get("padding_side", "right"),
                truncation_side=config.get("truncation_side", "right"))


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------
class BatchEncoding(dict):
    """transformers' result object: a dict {"input_ids": ..., "attention_mask": ...} whose keys
    are also attributes (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _content(token):
    return token.content if isinstance(token, AddedToken) else token


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer, the ids of transformers' `CLIPTokenizer` (see the module's
    docstring for the steps). Build it with `from_pretrained(folder)`, or from a vocabulary:

    vocab: {token: id}. merges: a list of (left, right), first = merged first.
    unk_token, bos_token, eos_token, pad_token: a str or AddedToken (CLIP's defaults).
    model_max_length: the length `truncation=True` / `padding="max_length"` use when no
        `max_length` is given (77 in CLIP's folders; "no limit" when absent, as transformers).
    added_tokens: a list of (AddedToken, id or None) matched in the text before BPE; the four
        special tokens are added to it as transformers adds them.
    padding_side, truncation_side: "right" (CLIP's) or "left".
    """

    model_input_names = ("input_ids", "attention_mask")

    def __init__(self, vocab, merges, unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                 eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                 model_max_length=VERY_LARGE_INTEGER, added_tokens=(), padding_side="right",
                 truncation_side="right"):
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"CLIPTokenizer: {name} must be 'right' or 'left', got {side!r}")
        self.encoder = dict(vocab)                                  # token -> id
        self.bpe_ranks = {}
        for rank, (left, right) in enumerate(merges):
            for part in (left, right, left + right):
                if part not in self.encoder:                # `tokenizers` refuses such a file too
                    raise ValueError(f"CLIPTokenizer: the merge {left!r} + {right!r} (rank {rank}) "
                                     f"needs {part!r}, which is not in the vocabulary")
            self.bpe_ranks[(left, right)] = rank     # a repeated merge keeps its last rank
        self.model_max_length = int(model_max_length)
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self._special = {"unk_token": unk_token, "bos_token": bos_token, "eos_token": eos_token,
                         "pad_token": pad_token}
        self._add_tokens(list(added_tokens), self._special)
        self.decoder = {i: t for t, i in self.encoder.items()}     # id -> token
        self.decoder.update({i: t.content for t, i in self.added_tokens})
        for name in ("unk", "bos", "eos", "pad"):
            token = _content(self._special[f"{name}_token"])
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", self.convert_tokens_to_ids(token))
        self._cache = {}                                           # word -> its BPE ids

    def _add_tokens(self, added, special):
        """The added tokens, collected as transformers 5 collects them: the folder's list, then
        the named special tokens in the order bos, eos, unk, pad, each one unless the folder's
        list has its content or an identical token came before (a plain string becomes a special
        token matched in the raw text). Added one after the other, a later token with the same
        content replaces the flags of an earlier one (so in Stable Diffusion's folders, the
        pad_token string "<|endoftext|>" makes "<|endoftext|>" match in the raw text, though
        eos_token says "normalized": true). Each gets its vocabulary id, or a new id after it."""
        listed = {t.content for t, _ in added}
        named = []
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = special[key]
            if value is None or _content(value) in listed or any(value == v for v in named):
                continue
            named.append(value)
        for value in named:
            if isinstance(value, str):
                token = AddedToken(value, special=True)
            else:
                token = AddedToken(value.content, value.single_word, value.lstrip, value.rstrip,
                                   value.normalized, special=True)
            added.append((token, None))
        next_id = max(list(self.encoder.values()) + [i for _, i in added if i is not None]) + 1
        by_content = {}                                  # content -> (AddedToken, id); last wins
        for token, token_id in added:
            if token.content in self.encoder:
                token_id = self.encoder[token.content]
            elif token.content in by_content:
                token_id = by_content[token.content][1]
            elif token_id is None:
                token_id, next_id = next_id, next_id + 1
            by_content[token.content] = (token, token_id)
        self.added_tokens = list(by_content.values())
        self._raw_patterns, self._normalized_patterns = {}, {}
        for token, token_id in self.added_tokens:
            if token.normalized:      # matched in the normalised text, as its normalised spelling
                self._normalized_patterns[normalize(token.content)] = (token, token_id)
            else:
                self._raw_patterns[token.content] = (token, token_id)
        self.added_tokens_encoder = {t.content: i for t, i in self.added_tokens}
        self.all_special_ids = sorted({i for t, i in self.added_tokens if t.special})

    @classmethod
    def from_pretrained(cls, folder, subfolder=None, **kwargs):
        """Load a tokenizer folder (either layout, see `read_tokenizer_folder`); `subfolder`
        picks e.g. the "tokenizer" folder of a pipeline; keyword arguments override the folder's
        (e.g. model_max_length=77)."""
        if subfolder:
            folder = os.path.join(folder, subfolder)
        return cls(**{**read_tokenizer_folder(folder), **kwargs})

    @property
    def vocab_size(self):
        return len(self.encoder)

    def __len__(self):
        return len(set(self.encoder.values()) | set(self.added_tokens_encoder.values()))

    def get_vocab(self):
        return {**self.encoder, **self.added_tokens_encoder}

    # ---- text -> tokens ------------------------------------------------------------------------
    def _bpe_word(self, word):
        """One word (normalised, from `split_words`) -> its token ids, through BPE."""
        if word not in self._cache:
            symbols = bpe(word_symbols(word, self.encoder, self.unk_token), self.bpe_ranks)
            self._cache[word] = [self.encoder.get(s, self.unk_token_id) for s in symbols]
        return self._cache[word]

    def _encode_text(self, text):
        """str -> list of token ids, without start/end tokens (steps 1 to 5)."""
        if not isinstance(text, str):
            raise TypeError(f"CLIPTokenizer: expected a str (or a list of str), got "
                            f"{type(text).__name__}")
        ids = []
        for raw, token_id in split_on_added_tokens(text, self._raw_patterns):
            if token_id is not None:                  # a special token written in the raw text
                ids.append(token_id)
                continue
            for piece, piece_id in split_on_added_tokens(normalize(raw),
                                                         self._normalized_patterns):
                if piece_id is not None:
                    ids.append(piece_id)
                else:
                    for word in split_words(piece):
                        ids.extend(self._bpe_word(word))
        return ids

    def tokenize(self, text):
        """str -> the list of token strings: 'A cat!' -> ['a</w>', 'cat</w>', '!</w>']."""
        return self.convert_ids_to_tokens(self._encode_text(text))

    def convert_tokens_to_ids(self, tokens):
        """A token string (or a list of them) -> its id(s); unknown tokens give the unk id."""
        if isinstance(tokens, str):
            token_id = self.added_tokens_encoder.get(tokens, self.encoder.get(tokens))
            if token_id is None:
                token_id = self.added_tokens_encoder.get(self.unk_token,
                                                         self.encoder.get(self.unk_token))
            return token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """An id (or a list of ids) -> its token string(s)."""
        if isinstance(ids, (int, np.integer)):
            return self.convert_ids_to_tokens([ids])[0]
        unknown = [int(i) for i in ids if int(i) not in self.decoder]
        if unknown:
            raise ValueError(f"CLIPTokenizer: ids {unknown[:5]} are not in the vocabulary "
                             f"(0..{max(self.decoder)})")
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.decoder[int(i)] for i in ids if int(i) not in special]

    def build_inputs_with_special_tokens(self, ids):
        """[<|startoftext|>] + ids + [<|endoftext|>]: where CLIP's sequences start and end."""
        return [self.bos_token_id] + list(ids) + [self.eos_token_id]

    def encode(self, text, add_special_tokens=True, truncation=None, max_length=None):
        """str -> a list of ids, <|startoftext|> ... <|endoftext|> (`__call__`'s input_ids)."""
        return self(text, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length)["input_ids"]

    # ---- the call diffusers makes --------------------------------------------------------------
    def _resolve_lengths(self, padding, truncation, max_length):
        """transformers' rules for padding/truncation/max_length. Returns (pad, truncate, length):
        pad in {None, "longest", "max_length"}, truncate a bool, length an int or None."""
        if max_length is not None and padding is False and truncation is None:
            truncation = True                         # max_length alone turns truncation on
        if padding is True or padding == "longest":
            pad = "longest"
        elif padding is False or padding is None or padding == "do_not_pad":
            pad = None
        elif padding == "max_length":
            pad = "max_length"
        else:
            raise ValueError(f"CLIPTokenizer: padding must be True, False, 'longest', "
                             f"'max_length' or 'do_not_pad', got {padding!r}")
        if truncation in (True, "longest_first", "only_first"):
            truncate = True
        elif truncation in (False, None, "do_not_truncate"):
            truncate = False
        else:
            raise ValueError(f"CLIPTokenizer: truncation must be True, False, 'longest_first', "
                             f"'only_first' or 'do_not_truncate', got {truncation!r}")
        if max_length is None:                        # then model_max_length, unless "no limit"
            limited = self.model_max_length <= LARGE_INTEGER
            if pad == "max_length":
                pad = pad if limited else None
            if truncate:
                truncate = limited
            if limited and (pad == "max_length" or truncate):
                max_length = self.model_max_length
        elif isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) \
                or max_length < 0:
            raise ValueError(f"CLIPTokenizer: max_length must be a non-negative int, got "
                             f"{max_length!r}")
        return pad, truncate, max_length

    def __call__(self, text, padding=False, truncation=None, max_length=None,
                 return_tensors=None, add_special_tokens=True, return_attention_mask=True,
                 pad_to_multiple_of=None, padding_side=None):
        """Tokenize a str or a list of str, as transformers does.

        Returns a BatchEncoding with "input_ids" and "attention_mask" (1 for a real token, 0 for
        padding): lists (one list for a str, a list of lists for a batch), or with
        return_tensors="np" int64 arrays of shape (B, S) (B = 1 for a str).
        truncation: keep at most max_length ids, the start/end tokens included (the text loses
            its tail, or its head with truncation_side="left").
        padding: "max_length" pads every row to max_length with the pad token; True/"longest"
            to the longest row of the batch; pad_to_multiple_of rounds that length up.
        Without max_length, both use the folder's model_max_length (77 for CLIP).
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not texts:
            raise ValueError("CLIPTokenizer: got an empty list of texts")
        pad, truncate, max_length = self._resolve_lengths(padding, truncation, max_length)
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"CLIPTokenizer: padding_side must be 'right' or 'left', got {side!r}")
        if pad is not None and self.pad_token_id is None:
            raise ValueError("CLIPTokenizer: asked to pad, but the tokenizer has no pad token")
        n_special = 2 if add_special_tokens else 0
        if truncate and max_length < n_special:
            raise ValueError(f"CLIPTokenizer: max_length={max_length} leaves no room for the "
                             f"{n_special} start/end tokens")

        rows = []
        for t in texts:
            ids = self._encode_text(t)
            if truncate and len(ids) > max_length - n_special:        # the text loses its end
                keep = max_length - n_special
                ids = ids[:keep] if self.truncation_side == "right" else ids[len(ids) - keep:]
            rows.append(self.build_inputs_with_special_tokens(ids) if add_special_tokens
                        else ids)

        length = None
        if pad == "max_length":
            length = max_length
        elif pad == "longest":
            length = max((len(r) for r in rows), default=0)
        if length is not None and pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        masks = []
        for k, row in enumerate(rows):
            fill = max(0, length - len(row)) if length is not None else 0
            padding_ids, mask = [self.pad_token_id] * fill, [1] * len(row)
            if side == "right":
                rows[k], masks_row = row + padding_ids, mask + [0] * fill
            else:
                rows[k], masks_row = padding_ids + row, [0] * fill + mask
            masks.append(masks_row)

        out = {"input_ids": rows}
        if return_attention_mask:
            out["attention_mask"] = masks
        if return_tensors is not None:
            return BatchEncoding(self._to_tensors(out, return_tensors))
        if not batched:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    def _to_tensors(self, out, return_tensors):
        """Lists of rows -> (B, S) arrays; the torch package adds return_tensors="pt"."""
        if return_tensors != "np":
            raise ValueError(f"CLIPTokenizer: return_tensors must be None or 'np' (the torch "
                             f"package's tokenizer also takes 'pt'), got {return_tensors!r}")
        lengths = {len(row) for row in out["input_ids"]}
        if len(lengths) > 1:
            raise ValueError(f"CLIPTokenizer: the rows have different lengths {sorted(lengths)}; "
                             f"pass padding=True or padding='max_length' to make one array")
        return {k: np.array(v, dtype=np.int64).reshape(len(v), -1) for k, v in out.items()}

    # ---- ids -> text ---------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens=False):
        """Token ids -> text, as transformers decodes CLIP: each token's characters back to their
        bytes (`bytes_to_unicode` reversed), the bytes read as UTF-8 (a broken sequence becomes
        U+FFFD), every "</w>" a space, the ends stripped. The text comes back normalised
        (lower-case, single spaces between words)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        data = bytearray()
        for token in self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens):
            if all(c in CHAR_TO_BYTE for c in token):
                data.extend(CHAR_TO_BYTE[c] for c in token)
            else:                        # a token that is not byte characters (an added token)
                data.extend(token.encode("utf-8"))
        text = data.decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ").strip()

    def batch_decode(self, sequences, skip_special_tokens=False):
        """decode for each row of a (B, S) array or a list of id lists."""
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __repr__(self):
        return (f"CLIPTokenizer(vocab_size={self.vocab_size}, merges={len(self.bpe_ranks)}, "
                f"model_max_length={self.model_max_length})")
