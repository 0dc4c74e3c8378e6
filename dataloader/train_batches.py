"""Training-side data plumbing shared by TextVid pre-alignment and benchmark finetuning:

- `TaskBatchSampler`: the epoch's shuffled, rank-sharded batches, each tagged with its kind ("vqa" or,
  with probability `caption_prob`, "caption"). Seeded by (seed, epoch): `--resume` replays the exact
  order and kinds, and every rank sees the same kind at the same step. `set_epoch(e, start=k)` skips the
  epoch's first k batches (resuming a mid-epoch checkpoint) without building their items. With item
  lengths (`--group_by_length`) each step's items have similar lengths (less padding), and every rank
  gets the same number of items of similar lengths at every step.
- `MCQATrainDataset`: a benchmark's `MCQADataset` as training items: the answer's mcqa sequence, plus
  the flipped sequences (vaq, qav) when asked for.
- `TrainCollate`: `TrainItem`s -> `TrainBatch`, one padded `Batch` per task (vqa / caption / vaq / qav),
  padded to the batch's longest row. Sequences longer than `max_seq_len` are kept whole (never cut) and
  counted. `TrainBatch.pin_memory()` is what DataLoader's `pin_memory=True` calls on it.
"""
import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset, Sampler

from .base import TrainItem
from .mcqa import MCQADataset
from .packing import Batch, collate_rows, single_row


GROUP_STEPS = 64  # --group_by_length: steps whose items are sorted by length together


class TaskBatchSampler(Sampler):
    """Yields lists of `(epoch, index, kind)` keys, one list per batch of this rank.

    Per epoch: a permutation of the n items (generator seeded by seed, epoch), padded by repeating its
    start so that it splits evenly over the ranks (as DistributedSampler does), rank r taking every
    world-th item; batches of `batch_size` (the last one may be smaller unless `drop_last`). Batch j
    is a "caption" batch with probability `caption_prob`, drawn from a second (seed, epoch) generator,
    so all ranks agree on the kind of step j. `len()` is always the whole epoch's number of batches (the
    lr schedule counts on it), also when `start` skips the first batches."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 caption_prob: float = 0.0, shuffle: bool = True, drop_last: bool = False,
                 lengths: Optional[Sequence[int]] = None):
        if n <= 0:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} items")
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world_size
        self.seed, self.caption_prob, self.shuffle, self.drop_last = seed, caption_prob, shuffle, drop_last
        self.lengths = None if lengths is None else np.asarray(lengths)
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

    def _order(self) -> np.ndarray:
        """The epoch's permutation, padded by repeating its start to a multiple of the world size."""
        order = self._rng(1).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.per_rank * self.world
        if total > self.n:
            order = np.concatenate([order, np.resize(order, total - self.n)])
        return order

    def _batches(self) -> List[np.ndarray]:
        """This rank's batches of the epoch (item indices). Plain: rank r takes every world-th item of the
        permutation. Grouped by length: the permutation is cut into windows of GROUP_STEPS steps, each
        window sorted by length (longest first, ties in permutation order) and cut into steps of world x
        batch_size items; the items of a step are dealt round-robin over the ranks (equal counts, similar
        lengths), and the steps are shuffled (the epoch's generator)."""
        order, bs = self._order(), self.batch_size
        if self.lengths is None:
            mine = order[self.rank::self.world]
            return [mine[j * bs:(j + 1) * bs] for j in range(len(self))]
        step = bs * self.world
        window = step * GROUP_STEPS
        steps = []
        for w in range(0, len(order), window):
            chunk = order[w:w + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            steps += [chunk[i:i + step] for i in range(0, len(chunk), step)]
        if self.drop_last:
            steps = [s for s in steps if len(s) == step]
        if len(steps) > 1 and len(steps[-1]) < step:  # the short step stays last (as in the plain order)
            steps = [steps[i] for i in self._rng(3).permutation(len(steps) - 1)] + steps[-1:]
        elif self.shuffle:
            steps = [steps[i] for i in self._rng(3).permutation(len(steps))]
        return [s[self.rank::self.world] for s in steps]

    def __iter__(self):
        batches = self._batches()
        caption = self._rng(2).random(len(batches)) < self.caption_prob
        for j in range(self.start, len(batches)):
            kind = "caption" if caption[j] else "vqa"
            yield [(self.epoch, int(i), kind) for i in batches[j]]

    def state_dict(self) -> dict:
        return {"seed": int(self.seed), "epoch": self.epoch, "n": self.n, "batch_size": self.batch_size,
                "world_size": self.world, "caption_prob": float(self.caption_prob),
                "group_by_length": self.lengths is not None}


class MCQATrainDataset(Dataset):
    """Finetuning items of a benchmark (built with `train=True`, so every question has an answer): the
    answer's mcqa sequence, plus the flipped vaq / qav ones. Keys are `(epoch, index, kind)` from
    `TaskBatchSampler` or a plain index."""

    def __init__(self, ds: MCQADataset, vaq: bool = False, qav: bool = False):
        self.ds, self.vaq, self.qav = ds, vaq, qav

    def __len__(self):
        return len(self.ds)

    def lengths(self) -> List[int]:
        """Per item, the tokens of its training sequences (what its rows cost; `--group_by_length`)."""
        tasks = ["mcqa"] + [t for t in ("vaq", "qav") if getattr(self, t)]
        return [sum(len(self.ds.sequences(r, t)) for t in tasks) for r in self.ds.records]

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
