"""Tokenise once, gather per episode: token ids live in one flat Arrow buffer, episodes pad to their own length.

``tokenize_dataset`` runs one batched ``map``; :class:`TokenStore` reads the ``input_ids`` list column as
(values, offsets) without copying, and pads the rows of an episode with a few numpy gathers.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..conventions import conventions_for
from .episode import Episode

logger = logging.getLogger(__name__)


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: Any,
    text_column: str = "text",
    max_length: int | None = 128,
    num_proc: int | None = None,
    prefix: str | None = None,
) -> datasets.Dataset:
    """Add ``input_ids`` (unpadded, truncated to ``max_length``) in one batched map; other columns stay.

    ``prefix`` goes before every text; by default it is the model's input convention, looked up from the
    tokenizer (:func:`~hf_metatransfer.conventions.conventions_for`: e5's ``"query: "``), so that forgetting it
    cannot silently change results; ``""`` tokenises the texts as they are.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no pad token: set tokenizer.pad_token = tokenizer.eos_token "
            "(decoder-only models) or add one."
        )
    if prefix is None:
        conventions = conventions_for(tokenizer)
        prefix = conventions.prefix
        logger.info("Input prefix %r for %s (%s); pass prefix= to change it.", prefix, tokenizer.name_or_path,
                    conventions.source or "no known convention")  # fmt: skip

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [prefix + t for t in batch[text_column]] if prefix else batch[text_column]
        return {
            "input_ids": tokenizer(texts, truncation=max_length is not None, max_length=max_length)[
                "input_ids"
            ]
        }

    return dataset.map(encode, batched=True, num_proc=num_proc, desc="Tokenising")


class TokenStore:
    """Flat token ids of a tokenised dataset; ``pad(rows)`` gives ``input_ids`` and ``attention_mask`` tensors."""

    def __init__(self, dataset: datasets.Dataset, pad_token_id: int, column: str = "input_ids",
                 padding_side: str = "right") -> None:  # fmt: skip
        if column not in dataset.column_names:
            raise ValueError(f"No {column!r} column: run tokenize_dataset(dataset, tokenizer) first.")
        if padding_side not in ("right", "left"):
            raise ValueError("padding_side must be 'right' or 'left'.")
        chunked = dataset.select_columns([column]).with_format("arrow")[:][column]
        array = pa.concat_arrays(chunked.chunks) if chunked.num_chunks != 1 else chunked.chunk(0)
        if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            offsets = array.offsets.to_numpy().astype(np.int64)
            self.values = array.values.to_numpy().astype(np.int64)
            self.starts, self.lengths = offsets[:-1], np.diff(offsets)
        else:
            raise ValueError(f"Column {column!r} has type {array.type}; expected lists of token ids.")
        self.pad_token_id, self.padding_side = int(pad_token_id), padding_side

    def pad(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        positions = np.arange(width)
        if self.padding_side == "right":
            mask = positions[None, :] < lengths[:, None]
            source = self.starts[rows][:, None] + positions[None, :]
        else:
            mask = positions[None, :] >= (width - lengths)[:, None]
            source = self.starts[rows][:, None] + positions[None, :] - (width - lengths)[:, None]
        ids = np.where(mask, self.values[np.where(mask, source, 0)], self.pad_token_id)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}


class EpisodeCollator:
    """Episode -> tensors: ``support`` / ``query`` dicts with ``input_ids``, ``attention_mask``, ``labels``.

    Works as a ``DataLoader`` ``collate_fn`` over episodes (a list of one episode gives that episode).
    """

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __call__(self, episode: Episode | list[Episode]) -> dict[str, Any]:
        if isinstance(episode, list):
            if len(episode) != 1:
                raise ValueError("Collate one episode at a time (DataLoader batch_size=None or 1).")
            episode = episode[0]
        support = self.store.pad(episode.support)
        query = self.store.pad(episode.query)
        support["labels"] = torch.from_numpy(episode.support_labels)
        query["labels"] = torch.from_numpy(episode.query_labels)
        return {"support": support, "query": query, "episode": episode}


def micro_batches(batch: dict[str, torch.Tensor], size: int | None) -> list[dict[str, torch.Tensor]]:
    """A padded batch as length-sorted micro-batches of at most ``size`` rows (near-equal sizes), each without the
    trailing columns that are padding in all its rows: a per-row loss summed over them is the batch's, at fewer pad
    tokens (an episode pads to its longest text; short intent texts leave half the tokens padding). ``None``, or a
    batch of at most ``size`` rows: the batch whole, as it is.

    Only trailing columns go: a left-padded batch keeps its width, so positions computed from it do not shift.
    """
    rows = len(next(iter(batch.values())))
    if size is not None and size < 1:
        raise ValueError(f"size={size}: the most rows a micro-batch holds, >= 1 (None: the batch whole).")
    if size is None or rows <= size:
        return [batch]
    mask = batch.get("attention_mask")
    order = torch.arange(rows) if mask is None else torch.argsort(mask.sum(-1).cpu(), stable=True)
    seq = None if mask is None else mask.shape[1]
    chunks = []
    for index in torch.tensor_split(order, -(-rows // size)):
        chunk = {k: v[index.to(v.device)] for k, v in batch.items()}
        if mask is not None:
            used = chunk["attention_mask"].any(0).nonzero()
            width = int(used.max()) + 1 if len(used) else 0
            chunk = {k: v[:, :width] if v.dim() >= 2 and v.shape[1] == seq else v for k, v in chunk.items()}
        chunks.append(chunk)
    return chunks
