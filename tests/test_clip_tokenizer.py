"""CLIPTokenizer (uvit_numpy.clip_tokenizer, and its torch twin) against transformers'.

Every comparison runs the same strings through both tokenizers loaded from the same folder:
* CLIP's real vocabulary (49,408 tokens), built by `write_clip_tokenizer_folder` from OpenAI's
  merges file, in the Hub's layout and in the layout transformers 5's `save_pretrained` writes;
* a small vocabulary this file learns itself (a few hundred merges), in five folder variants: the
  Hub's layout with plain special tokens, Stable Diffusion's legacy files (special tokens as
  "normalized" dicts), an `added_tokens_decoder` with "!" as the pad token and left padding and
  truncation, transformers 5's layout, and a vocabulary without the non-ASCII bytes (unknown
  tokens).

The real vocabulary needs OpenAI's merges file, which the `open_clip_torch` wheel ships. Nothing is
downloaded here: the file is found through $UVIT_CLIP_BPE (the .txt.gz or the wheel) or in the
project's git-ignored `.ci-cache/` folder, which `.ci/run` fills with
`pip download --no-deps open_clip_torch -d .ci-cache`. Without it the real-vocabulary tests FAIL
(they do not skip) and say that command: they are what shows the ids equal transformers' on the
vocabulary aMUSEd and Stable Diffusion use.
"""

import itertools
import json
import os
import random
import unicodedata
from collections import Counter

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Regex, normalizers  # transformers' own dependency

from uvit_numpy import clip_tokenizer as C

# ----------------------------------------------------------------------------------------------
# The strings
# ----------------------------------------------------------------------------------------------
HAND_WRITTEN = [
    # prompts as diffusers receives them
    "a photo of a cat", "A photo of an astronaut riding a horse on Mars",
    "cowboy on a horse, 8k, highly detailed, trending on artstation",
    "a watercolor painting of a fox in the snow", "an image of a 'happy' dog",
    # case and contractions
    "HELLO WORLD", "Hello World", "hELLo", "don't", "DON'T", "it's", "we're", "they've", "I'm",
    "you'll", "he'd", "'s", "'sam", "rock'n'roll", "O'Reilly", "can't won't shan't", "'''",
    "it''s", "‘curly’ quotes", "“double” quotes",
    # punctuation and symbols
    "!", "!!", "!!!", "?!", "...", "…", "a,b;c:d", "(parens) [brackets] {braces}", "<html>",
    "a+b=c", "50% off", "$100", "#hashtag", "@user", "e-mail", "snake_case_name", "C++",
    "path/to/file.png", "https://example.com/a?b=c&d=e", "~tilde~", "^_^", ":-)", "<3",
    # digits and numbers
    "0", "123", "2024-01-01", "3.14159", "1,000,000", "4k 8k 16k", "x²+y³", "½ ¼ ¾", "Ⅻ ⅻ",
    "①②③", "٣٤٥", "१२३", "一二三",
    # accents, composed and decomposed
    "café", "cafe\u0301", "CAFÉ", "naïve résumé", "Ångström", "Zürich", "façade", "piñata",
    "ÆØÅ æøå", "straße STRASSE", "İstanbul", "ıi", "ǅungla", "ﬁne ﬂow", "Ⓐ ⓑ",
    # other scripts
    "東京タワー", "日本語のテキスト", "中文字符", "한국어 텍스트", "ไทย", "हिन्दी", "עברית", "العربية",
    "ελληνικά ΕΛΛΗΝΙΚΆ", "ΟΔΥΣΣΕΥΣ", "Москва МОСКВА", "ქართული", "Ελλάδα", "tiếng việt",
    # emoji
    "🙂", "🙂🙂🙂", "a🙂b", "👍🏽", "👨‍👩‍👧", "🇫🇷🇯🇵", "❤️", "🐱 cat", "✨✨ sparkle",
    # white space
    "", " ", "   ", "\t", "\n", "a\tb", "a\nb", "a\r\nb", "  leading", "trailing  ",
    "many     spaces", "tab\t\tand\n\nnewlines", "\u00a0nbsp\u00a0", "ideographic\u3000space",
    "thin\u2009space", "line\u2028separator", "file\x1cseparator", "zero\u200bwidth",
    "\ufeffbom", "nel\x85", "vt\x0bff\x0c",
    # control characters and oddities
    "null\x00byte", "\x01\x02\x7f", "a\u0301", "\u0301", "\u0300\u0301\u0302", "\ufffd",
    "\U0001d400\U0001d401", "\U0010ffff",
    # HTML entities (transformers 5 does not un-escape them)
    "&amp;", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;", "&quot;",
    "&nbsp;", "&copy; 2024",
    # special tokens written in the text
    "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "x<|endoftext|>y",
    "<|ENDOFTEXT|>", "<|StartOfText|>!", "<|endoftext|><|endoftext|>", "<|endoftext", "<|",
    "|>", "<|startoftext|>hello<|endoftext|>", "<|endoftext|>!!", "!<|endoftext|>",
    # longer than 77 tokens
    "word " * 100, "a" * 500, "supercalifragilisticexpialidocious " * 20,
    "The quick brown fox jumps over the lazy dog. " * 12, "🙂" * 60, "1234567890" * 12,
]


def _random_strings(n, seed=0):
    """Seeded mixtures of the pieces above: words, scripts, marks, emoji, spaces, tokens."""
    rng = random.Random(seed)
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 2
            + list(" \t\n\r\x0b\x1c\x85\xa0\u2009\u3000\u200b")
            + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
            + list("éèàçñøßÉÀİıΣσςΩЖя東京日本中文한국ไทहिעבعر²½Ⅻ①٣")
            + ["\u0301", "\u0308", "\u0327", "\u05b0", "🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️"]
            + ["<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "'s", "'T", "'re", "n't",
               "&amp;", "&#39;", "cat", "photo", "astronaut", "painting", "hello", "world"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(n)]


STRINGS = list(dict.fromkeys(HAND_WRITTEN + _random_strings(150)))   # 154 + 150, minus repeats


def test_the_strings_are_many_and_varied():
    assert len(STRINGS) >= 300 and len(HAND_WRITTEN) >= 150


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_bpe():
    """OpenAI's merges file (or the wheel holding it); a failure that says how to get it."""
    try:
        return C.find_clip_bpe_file()
    except FileNotFoundError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


def _save_with_transformers(folder, to):
    """transformers 5's layout (tokenizer.json + tokenizer_config.json) of the same tokenizer."""
    transformers.CLIPTokenizer.from_pretrained(folder).save_pretrained(to)   # 0.3 s for CLIP's
    assert sorted(os.listdir(to)) == ["tokenizer.json", "tokenizer_config.json"]
    return to


@pytest.fixture(scope="module")
def real_folders(clip_bpe, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_real")
    hub = C.write_clip_tokenizer_folder(clip_bpe, str(root / "hub"))
    return {"hub": hub, "saved": _save_with_transformers(hub, str(root / "saved"))}


def _learn_merges(texts, n_merges):
    """A small BPE vocabulary learnt from `texts` the classic way: count the neighbouring pairs of
    symbols over all words, merge the most frequent (ties: the smallest pair), repeat."""
    words = Counter()
    for text in texts:
        for word in C.split_words(C.normalize(text)):
            chars = C.to_byte_chars(word)
            words[tuple(chars[:-1]) + (chars[-1] + C.END_OF_WORD,)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], tuple(-ord(c) for c in "".join(pair))))
        merges.append(best)
        words = Counter({C.merge_pair(word, best): count for word, count in words.items()})
    return merges


def _small_vocab(merges, ascii_only=False):
    """CLIP's recipe (the byte characters, the same with </w>, the merges, the two special
    tokens) on a small list of merges; ascii_only keeps only the printable ASCII bytes."""
    chars = [c for b, c in C.BYTE_TO_CHAR.items() if not ascii_only or 0x21 <= b <= 0x7e]
    tokens = chars + [c + C.END_OF_WORD for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def _write(folder, vocab, merges, config, special_tokens_map=None):
    os.makedirs(folder)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    if special_tokens_map is not None:
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
            json.dump(special_tokens_map, f)
    return folder


def _dict_token(content, **flags):
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True, **flags}


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_small")
    corpus = [s for s in HAND_WRITTEN if s.isascii()] * 3
    merges = _learn_merges(corpus, 300)
    assert len({"".join(m) for m in merges}) == len(merges)    # `bpe`'s condition, see above
    ascii_merges = [m for m in merges if all(c in C.CHAR_TO_BYTE and 0x21 <= C.CHAR_TO_BYTE[c]
                                              <= 0x7e for c in "".join(m).replace("</w>", ""))]
    vocab, ascii_vocab = _small_vocab(merges), _small_vocab(ascii_merges, ascii_only=True)
    plain = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    folders = {}
    folders["hub"] = _write(str(root / "hub"), vocab, merges,
                            {"model_max_length": 77, **plain}, plain)
    # Stable Diffusion 1.x's files: special tokens as "normalized" dicts, the pad a plain string
    legacy = {k: _dict_token(v) for k, v in plain.items() if k != "pad_token"}
    legacy_config = {k: {**v, "__type": "AddedToken"} for k, v in legacy.items()}
    folders["legacy"] = _write(str(root / "legacy"), vocab, merges,
                               {"model_max_length": 77, "do_lower_case": True,
                                "pad_token": "<|endoftext|>", **legacy_config},
                               {**legacy, "pad_token": "<|endoftext|>"})
    # later files: an added_tokens_decoder; here "!" pads (as in Stable Diffusion 2), on the left
    decoder = {str(vocab["<|startoftext|>"]): _dict_token("<|startoftext|>", special=True),
               str(vocab["<|endoftext|>"]): _dict_token("<|endoftext|>", special=True,
                                                        normalized=False)}
    folders["decoder"] = _write(str(root / "decoder"), vocab, merges,
                                {"added_tokens_decoder": decoder, "model_max_length": 24,
                                 "padding_side": "left", "truncation_side": "left",
                                 **plain, "pad_token": "!"})
    folders["saved"] = _save_with_transformers(folders["legacy"], str(root / "saved"))
    folders["unk"] = _write(str(root / "unk"), ascii_vocab, ascii_merges,
                            {"model_max_length": 77, **plain}, plain)
    return folders


def _pair(folder):
    return (C.CLIPTokenizer.from_pretrained(folder),
            transformers.CLIPTokenizer.from_pretrained(folder))


@pytest.fixture(scope="module")
def real_pairs(real_folders):
    return {name: _pair(folder) for name, folder in real_folders.items()}


@pytest.fixture(scope="module")
def small_pairs(small_folders):
    return {name: _pair(folder) for name, folder in small_folders.items()}


# ----------------------------------------------------------------------------------------------
# The real vocabulary
# ----------------------------------------------------------------------------------------------
# Published CLIP ids of "a photo of a cat" (OpenAI's tokenizer, any CLIP model card): a check of
# the vocabulary's order that does not go through transformers, which gives equal ids for any order
CAT_PHOTO_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def test_the_real_vocabulary_is_openai_s(real_pairs):
    ours = real_pairs["hub"][0]                    # loaded from write_clip_tokenizer_folder's files
    vocab, merges = ours.encoder, sorted(ours.bpe_ranks, key=ours.bpe_ranks.get)
    assert len(vocab) == 49408 and len(merges) == 48894
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["in"] == 512
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert ours("a photo of a cat")["input_ids"] == CAT_PHOTO_IDS
    # `bpe` merges the lowest rank everywhere at once; `tokenizers` merges one position at a time.
    # They agree when no two merges make the same symbol (49,408 distinct tokens above) and each
    # merge's two halves are made by earlier merges (or are single symbols):
    made = set(C.BYTE_TO_CHAR.values()) | {c + "</w>" for c in C.BYTE_TO_CHAR.values()}
    for rank, (left, right) in enumerate(merges):
        assert left in made and right in made, (rank, left, right)
        made.add(left + right)


def _assert_same_ids(ours, theirs, strings, label):
    different = [(s, a, b) for s in strings
                 for a, b in [(ours(s)["input_ids"], theirs(s)["input_ids"])] if a != b]
    assert not different, (f"{label}: {len(different)} of {len(strings)} strings differ, e.g. "
                           f"{different[0][0]!r}: ours {different[0][1]} transformers "
                           f"{different[0][2]}")


def _assert_same_batch(ours, theirs, strings, label, **kwargs):
    a = ours(strings, return_tensors="np", **kwargs)
    b = theirs(strings, return_tensors="np", **kwargs)
    for key in ("input_ids", "attention_mask"):
        assert a[key].dtype == np.int64 and a[key].shape == b[key].shape, (label, key,
                                                                          a[key].shape)
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{label}: {key}")


@pytest.mark.parametrize("layout", ["hub", "saved"])
def test_real_vocabulary_ids_equal_transformers(real_pairs, layout):
    ours, theirs = real_pairs[layout]
    _assert_same_ids(ours, theirs, STRINGS, f"real vocabulary, {layout} layout")
    # as diffusers calls it: (B, 77), long prompts truncated, the rest padded
    _assert_same_batch(ours, theirs, STRINGS, layout, padding="max_length", max_length=77,
                       truncation=True)
    assert ours.model_max_length == theirs.model_max_length == 77


def test_the_two_layouts_give_the_same_tokenizer(real_pairs):
    hub, saved = real_pairs["hub"][0], real_pairs["saved"][0]
    assert hub.encoder == saved.encoder and hub.bpe_ranks == saved.bpe_ranks
    assert [(t.content, i) for t, i in hub.added_tokens] == \
           [(t.content, i) for t, i in saved.added_tokens]


# ----------------------------------------------------------------------------------------------
# A small vocabulary of our own, in five folder variants
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["hub", "legacy", "decoder", "saved", "unk"])
def test_small_vocabulary_ids_equal_transformers(small_pairs, variant):
    ours, theirs = small_pairs[variant]
    assert 300 < ours.vocab_size < 1000
    _assert_same_ids(ours, theirs, STRINGS, f"small vocabulary, {variant}")
    _assert_same_batch(ours, theirs, STRINGS, variant, padding="max_length", truncation=True)
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.all_special_ids == sorted(set(theirs.all_special_ids))


def test_the_unk_variant_really_meets_unknown_symbols(small_pairs):
    ours, _ = small_pairs["unk"]
    ids = ours("café 東京")["input_ids"]
    assert ids.count(ours.unk_token_id) >= 7           # é: 2 bytes, 東京: 6 bytes, none known


def test_pad_exclamation_mark_is_an_added_token(small_pairs):
    """A folder whose pad token is "!" makes "!" a special token matched as a whole."""
    ours, theirs = small_pairs["decoder"]
    assert ours.pad_token_id == ours.encoder["!"]
    assert ours("hi!!")["input_ids"] == theirs("hi!!")["input_ids"]
    assert ours("hi!!")["input_ids"].count(ours.pad_token_id) == 2


# ----------------------------------------------------------------------------------------------
# The call's options
# ----------------------------------------------------------------------------------------------
CALLS = [
    dict(),
    dict(padding=True),
    dict(padding="longest", max_length=12, truncation=True),
    dict(padding="max_length", max_length=20),
    dict(padding="max_length", truncation=True),            # the folder's model_max_length
    dict(truncation=True),
    dict(max_length=9),                                     # max_length alone truncates
    dict(max_length=2, truncation=True),                    # only the start and end tokens
    dict(padding=True, pad_to_multiple_of=8),
    dict(padding="max_length", max_length=16, truncation=True, padding_side="left"),
    dict(add_special_tokens=False, padding=True),
    dict(add_special_tokens=False, max_length=5, truncation="longest_first"),
    dict(padding="do_not_pad", truncation="do_not_truncate"),
    dict(return_attention_mask=False, padding=True),
]


def _variant_pair(request, variant):
    """(ours, transformers') on CLIP's vocabulary ("real") or the small "decoder" folder (left
    padding and truncation, "!" pads); asked for by name, so that only "real" needs CLIP's file."""
    if variant == "real":
        return request.getfixturevalue("real_pairs")["hub"]
    return request.getfixturevalue("small_pairs")[variant]


@pytest.mark.parametrize("variant", ["real", "decoder"])
@pytest.mark.parametrize("k", range(len(CALLS)))
def test_call_options_equal_transformers(request, variant, k):
    ours, theirs = _variant_pair(request, variant)
    kwargs, batch = CALLS[k], ["a photo of a cat", "word " * 40, "", "Hi! <|endoftext|> x"]
    for text in (batch, batch[1]):                          # a batch, then one string
        a, b = ours(text, **kwargs), theirs(text, **kwargs)
        assert sorted(a) == sorted(b), (kwargs, sorted(a), sorted(b))
        for key in a:
            assert a[key] == b[key], (kwargs, key, a[key], b[key])


def test_single_string_as_an_array(real_pairs):
    ours, theirs = real_pairs["hub"]
    a = ours("a photo of a cat", padding="max_length", max_length=77, return_tensors="np")
    b = theirs("a photo of a cat", padding="max_length", max_length=77, return_tensors="np")
    assert a.input_ids.shape == (1, 77)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.attention_mask, b.attention_mask)


def test_torch_twin_returns_the_same_ids_as_tensors(small_folders):
    torch = pytest.importorskip("torch")
    from uvit_torch.clip_tokenizer import CLIPTokenizer as TorchCLIPTokenizer
    ours_pt = TorchCLIPTokenizer.from_pretrained(small_folders["legacy"])
    ours_np = C.CLIPTokenizer.from_pretrained(small_folders["legacy"])
    kwargs = dict(padding="max_length", max_length=77, truncation=True)
    a = ours_pt(STRINGS[:20], return_tensors="pt", **kwargs)
    b = ours_np(STRINGS[:20], return_tensors="np", **kwargs)
    assert a.input_ids.dtype == torch.int64 and tuple(a.input_ids.shape) == (20, 77)
    np.testing.assert_array_equal(a.input_ids.numpy(), b.input_ids)
    np.testing.assert_array_equal(a.attention_mask.numpy(), b.attention_mask)
    with pytest.raises(ValueError, match="return_tensors"):
        ours_np("a", return_tensors="pt")


# ----------------------------------------------------------------------------------------------
# ids -> text
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["real", "decoder"])
def test_decode_equals_transformers(request, variant):
    ours, theirs = _variant_pair(request, variant)
    rows = theirs(STRINGS, padding="max_length", max_length=77, truncation=True,
                  return_tensors="np").input_ids
    for row in rows:
        for skip in (False, True):
            assert ours.decode(row, skip_special_tokens=skip) == \
                theirs.decode(row, skip_special_tokens=skip), (row, skip)
        assert ours.convert_ids_to_tokens(row.tolist()) == \
            theirs.convert_ids_to_tokens(row.tolist())
    assert ours.batch_decode(rows[:5]) == theirs.batch_decode(rows[:5])
    assert ours.tokenize("A photo, of a CAT!") == theirs.tokenize("A photo, of a CAT!")


# ----------------------------------------------------------------------------------------------
# The rules, checked on every character Python's Unicode database knows
# ----------------------------------------------------------------------------------------------
def test_character_rules_equal_tokenizers_on_every_known_character():
    """White space, letters, numbers, lower-casing and NFC of single characters, ours against
    the regular expressions and normalisers transformers' CLIPTokenizer runs (`tokenizers`)."""
    known = "".join(chr(c) for c in range(0x110000)
                    if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn")

    def removed(pattern):
        return normalizers.Replace(Regex(pattern), "").normalize_str(known)
    assert removed(r"\s") == "".join(c for c in known if not C.is_space(c))
    assert removed(r"\p{L}") == "".join(c for c in known if not C.is_letter(c))
    assert removed(r"\p{N}") == "".join(c for c in known if not C.is_number(c))
    assert normalizers.Lowercase().normalize_str(known) == "".join(c.lower() for c in known)
    # NFC of each character alone: "\n" between them composes with nothing and is never moved
    known = known.replace("\n", "")
    one_per_line = "\n".join(known)
    theirs = normalizers.NFC().normalize_str(one_per_line).split("\n")
    ours = unicodedata.normalize("NFC", one_per_line).split("\n")
    different = [hex(ord(c)) for c, a, b in zip(known, ours, theirs) if a != b]
    assert len(ours) == len(theirs) == len(known) and different == [], different[:10]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def test_folder_errors_name_what_is_missing(tmp_path, small_folders):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        C.CLIPTokenizer.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json and no vocab.json and no "
                                                "merges.txt"):
        C.CLIPTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json and no merges.txt"):
        C.CLIPTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        C.CLIPTokenizer.from_pretrained(str(tmp_path))


def test_call_errors(small_pairs):
    ours, _ = small_pairs["hub"]
    with pytest.raises(TypeError, match="expected a str"):
        ours(["a", 3])
    with pytest.raises(ValueError, match="empty list"):
        ours([])
    with pytest.raises(ValueError, match="padding must be"):
        ours("a", padding="everything")
    with pytest.raises(ValueError, match="different lengths"):  # transformers: an object array
        ours(["a", "a b c"], return_tensors="np")
    with pytest.raises(ValueError, match="leaves no room"):  # transformers: no truncation at all
        ours("a b c", max_length=1, truncation=True)


def test_missing_merges_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(C.CLIP_BPE_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="pip download --no-deps open_clip_torch"):
        C.find_clip_bpe_file(search=[str(tmp_path)])
    monkeypatch.setenv(C.CLIP_BPE_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        C.find_clip_bpe_file()
