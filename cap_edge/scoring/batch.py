"""The calibration batch: prompts + gold answers of the calibration problems, right-padded, with
the positions whose outputs predict each answer token and the subset (of K) each row belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import BudgetConfig
from ..errors import TaskError
from ..io import sha256_json
from ..prompts import encode_pair
from ..tasks.base import Problem


@dataclass
class CalibBatch:
    input_ids: torch.Tensor  # (N, T) right-padded: causal attention never sees the pads
    ans_row: torch.Tensor  # (A,) row of each answer token
    ans_pos: torch.Tensor  # (A,) position whose output predicts it
    ans_tgt: torch.Tensor  # (A,) the gold token id
    subset: torch.Tensor  # (N,) subset index of each row, in [0, K)
    tokens: torch.Tensor  # (N,) answer tokens per row
    lengths: torch.Tensor  # (N,) real (non-pad) tokens per row

    @property
    def n(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, end: int) -> "CalibBatch":
        """Rows [start, end) as a batch of their own (answer rows renumbered)."""
        end = min(end, self.n)
        keep = (self.ans_row >= start) & (self.ans_row < end)
        return CalibBatch(self.input_ids[start:end], self.ans_row[keep] - start, self.ans_pos[keep], self.ans_tgt[keep],
                          self.subset[start:end], self.tokens[start:end], self.lengths[start:end])

    def select(self, idx: torch.Tensor, T: int, offset: int = 0) -> "CalibBatch":
        """Rows ``idx`` (renumbered 0..), positions [offset, T): answer positions shift by ``offset``
        (every answer position must lie in the window)."""
        new = torch.full((int(self.ans_row.max()) + 1 if self.ans_row.numel() else 0,), -1, dtype=torch.long)
        new[idx] = torch.arange(len(idx))
        keep = new[self.ans_row] >= 0 if new.numel() else self.ans_row.new_zeros(0, dtype=torch.bool)
        pos = self.ans_pos[keep] - offset
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= T - offset):
            raise ValueError(f"select: answer positions outside the window [{offset}, {T})")
        return CalibBatch(self.input_ids[idx, offset:T], new[self.ans_row[keep]], pos, self.ans_tgt[keep],
                          self.subset[idx], self.tokens[idx], self.lengths[idx] - offset)

    def fingerprint(self) -> str:
        return sha256_json({"ids": self.input_ids.tolist(), "tgt": self.ans_tgt.tolist(),
                            "pos": self.ans_pos.tolist(), "subset": self.subset.tolist()})


def build_calib_batch(tokenizer, problems: Sequence[Problem], subsets: int, budget: BudgetConfig | None = None,
                      pad_id: int = 0) -> CalibBatch:
    budget = budget or BudgetConfig()
    problems = list(problems)[: budget.problems]
    if not problems:
        raise TaskError("the calibration set is empty: expected at least one problem, got 0")
    if len(problems) < subsets:
        raise TaskError(f"the calibration set is too small: {subsets} subsets need at least {subsets} problems, got {len(problems)}")
    seqs, rows, pos, tgt, counts = [], [], [], [], []
    for r, p in enumerate(problems):
        ctx, ans = encode_pair(tokenizer, p, p.answer)
        keep = max(1, budget.tokens_per_problem - len(ans))
        ctx = ctx[-keep:]  # cut long prompts from the left: the question end and answer stay
        full = ctx + ans
        seqs.append(full[:-1])
        for j, t in enumerate(ans):
            rows.append(r)
            pos.append(len(ctx) - 1 + j)
            tgt.append(t)
        counts.append(len(ans))
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    return CalibBatch(ids, torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt),
                      torch.arange(len(seqs)) % subsets, torch.tensor(counts, dtype=torch.float64),
                      torch.tensor([len(s) for s in seqs]))
