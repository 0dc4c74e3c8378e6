"""Training-side data plumbing shared by TextVid pre-alignment and benchmark finetuning:

- `TaskBatchSampler`: the epoch's shuffled, rank-sharded batches, each tagged with its kind ("vqa" or,
  with probability `caption_prob`, "caption"). Seeded by (seed, epoch): `--resume` replays the exact
  order and kinds, and every rank sees the same kind at the same step. `set_epoch(e, start=k)` skips the
  epoch's first k batches (resuming a mid-epoch checkpoint) without building their items.
- `MCQATrainDataset`: a benchmark's `MCQADataset` as training items: the answer's mcqa sequence, plus
  the flipped sequences (vaq, qav) when asked for.
- `TrainCollate`: `TrainItem`s -> `TrainBatch`, one padded `Batch` per task (vqa / caption / vaq / qav),
  padded to the batch's longest row. Sequences longer than `max_seq_len` are kept whole (never cut) and
  counted. `TrainBatch.pin_memory()` is what DataLoader's `pin_memory=True` calls on it.
"""
import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset, Sampler

from .base import TrainItem
from .mcqa import MCQADataset
from .packing import Batch, collate_rows, single_row


class TaskBatchSampler(Sampler):
    """Yields lists of `(epoch, index, kind)` keys, one list per batch of this rank.

    Per epoch: a permutation of the n items (generator seeded by seed, epoch), padded by repeating its
    start so that it splits evenly over the ranks (as DistributedSampler does), rank r taking every
    world-th item; batches of `batch_size` (the last one may be smaller unless `drop_last`). Batch j
    is a "caption" batch with probability `caption_prob`, drawn from a second (seed, epoch) generator,
    so all ranks agree on the kind of step j. `len()` is always the whole epoch's number of batches (the
    lr schedule counts on it), also when `start` skips the first batches."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 caption_prob: float = 0.0, shuffle: bool = True, drop_last: bool = False):
        if n <= 0:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.caption_prob, self.shuffle, self.drop_last = seed, caption_prob, shuffle, drop_last
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0):
        """Iterate epoch `epoch` from its batch `start` (0: the whole epoch)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start batch {start} outside the epoch's {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start)

    @property
    def per_rank(self) -> int:
        return math.ceil(self.n / self.world)

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def _rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, self.epoch, stream])

    def __iter__(self):
        order = self._rng(1).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:
            order = np.concatenate([order, np.resize(order, total - self.n)])
        mine = order[self.rank::self.world]
        n_batches = len(self)
        caption = self._rng(2).random(n_batches) < self.caption_prob
        for j in range(self.start, n_batches):
            kind = "caption" if caption[j] else "vqa"
            yield [(self.epoch, int(i), kind) for i in mine[j * self.batch_size:(j + 1) * self.batch_size]]

    def state_dict(self) -> dict:
        return {"seed": int(self.seed), "epoch": self.epoch, "n": self.n, "batch_size": self.batch_size,
                "world_size": self.world, "caption_prob": float(self.caption_prob)}


class MCQATrainDataset(Dataset):
    """Finetuning items of a benchmark (built with `train=True`, so every question has an answer): the
    answer's mcqa sequence, plus the flipped vaq / qav ones. Keys are `(epoch, index, kind)` from
    `TaskBatchSampler` or a plain index."""

    def __init__(self, ds: MCQADataset, vaq: bool = False, qav: bool = False):
        self.ds, self.vaq, self.qav = ds, vaq, qav

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key) -> TrainItem:
        index = key[1] if isinstance(key, tuple) else key
        r = self.ds.records[index]
        seqs = {"vqa": self.ds.sequences(r, "mcqa")}
        for task in ("vaq", "qav"):
            if getattr(self, task):
                seqs[task] = self.ds.sequences(r, task)
        return TrainItem(index, r.qid, self.ds.video(r), "vqa", seqs)


@dataclass
class TrainBatch:
    kind: str                              # "vqa" or "caption"
    parts: Dict[str, Batch]                # task -> padded batch ("vqa"|"caption", "vaq", "qav")
    n_items: int
    n_tokens: int                          # real (unpadded) tokens over all parts
    too_long: List[Tuple[str, int]] = field(default_factory=list)  # (item id, length) > max_seq_len
    n_cut: int = 0                         # items whose TVQA dialogue was cut to fit (--truncate_dialogue)
    ids: List[str] = field(default_factory=list)  # item ids, for messages

    def to(self, device):
        for b in self.parts.values():
            b.to(device)
        return self

    def pin_memory(self) -> "TrainBatch":
        """The same batch with every tensor in page-locked host memory (DataLoader(pin_memory=True)
        calls this in its pinning thread; without it a custom batch type is passed through unpinned),
        so that `.to(device)` copies asynchronously. Needs an accelerator, as `Tensor.pin_memory` does."""
        return replace(self, parts={task: b.pin_memory() for task, b in self.parts.items()})


class TrainCollate:
    def __init__(self, max_seq_len: Optional[int] = None):
        self.max_seq_len = max_seq_len

    def __call__(self, items: List[TrainItem]) -> TrainBatch:
        tasks = list(items[0].seqs)
        kinds = {it.kind for it in items}
        if len(kinds) != 1 or any(list(it.seqs) != tasks for it in items):
            raise ValueError("a training batch mixes items of different kinds or tasks")
        videos = [it.video for it in items]
        # qav's loss scores the video slot, not tokens: its rows carry no token targets
        parts = {task: collate_rows([single_row(it.seqs[task], scored=task != "qav") for it in items], videos)
                 for task in tasks}
        lengths = [max(len(s) for s in it.seqs.values()) for it in items]
        too_long = [(str(it.id), n) for it, n in zip(items, lengths) if self.max_seq_len and n > self.max_seq_len]
        n_tokens = sum(len(s) for it in items for s in it.seqs.values())
        n_cut = sum(any(s.n_cut for s in it.seqs.values()) for it in items)
        return TrainBatch(kinds.pop(), parts, len(items), n_tokens, too_long, n_cut, [str(it.id) for it in items])
