"""The PyTorch backend: log-likelihoods and greedy generation of a Hugging Face model, batched.
Runtimes (``runtimes/``) implement the same two methods on exported artifacts."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import length_batches, shared_prefix

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


class TorchBackend:
    """Batched scoring with right padding (causal attention never sees the pads to the right)."""

    def __init__(self, model, tokenizer, max_batch_tokens: int = 2048, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_tokens = max_batch_tokens
        self.progress = progress

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @torch.inference_mode()
    def loglik(self, requests: Sequence[Request]) -> list[float]:
        """Sum log p(continuation | context) per request, batched:

        * the distinct contexts (one per problem: its choices share it) run together, length-sorted
          and right-padded (causal attention never lets a real token see a pad to its right);
        * the prefix every context of a batch shares (the chat template's system turn) runs once
          and its KV cache is copied to every row;
        * the vocabulary projection runs only where a token is scored (the last context position
          and the continuation positions), not at every context position;
        * every continuation of a context reads that context's KV cache (rows selected from the
          batch's cache), with the pad slots masked and explicit positions.
        Equal to ``loglik_sequential`` within float round-off (tested to 1e-4)."""
        head = self.model.get_output_embeddings()
        decoder = self.model.get_decoder()
        dev = self.device
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        ctxs = sorted(groups, key=len)
        out = [0.0] * len(requests)
        bar = tqdm(total=len(requests), desc="loglik", disable=not self.progress, leave=False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # sorted contexts in batches with under 5% padding: pads are compute spent on nothing
        for batch in length_batches(list(range(len(ctxs))), [len(c) for c in ctxs], self.max_batch_tokens, max_pad=0.05):
            rows = [ctxs[b] for b in batch]
            B, T = len(rows), len(rows[-1])  # sorted: the last is the longest
            P = shared_prefix(rows)  # < the shortest context: every row keeps a token to read its answer from
            lens = torch.tensor([len(c) for c in rows], device=dev)
            ids = torch.full((B, T - P), pad, dtype=torch.long)
            for r, c in enumerate(rows):
                ids[r, : len(c) - P] = torch.tensor(c[P:])
            cmask = (torch.arange(T, device=dev)[None] < lens[:, None]).long()  # (B, T), prefix included
            cache = None
            if P:
                cache = decoder(input_ids=torch.tensor([rows[0][:P]], device=dev), use_cache=True).past_key_values
                cache.batch_repeat_interleave(B)  # (B, ...) the same prefix for every row
            pos = torch.arange(P, T, device=dev)[None].expand(B, -1)
            res = decoder(input_ids=ids.to(dev), attention_mask=cmask, position_ids=pos, past_key_values=cache,
                          use_cache=True)
            last = res.last_hidden_state[torch.arange(B, device=dev), lens - 1 - P]  # (B, D): predicts each cont[0]
            first = F.log_softmax(head(last).float(), dim=-1)  # (B, V)
            longer = []  # (ctx row, request) whose continuation has more than one token
            for r, c in enumerate(rows):
                for i in groups[c]:
                    cont = requests[i][1]
                    out[i] = first[r, cont[0]].item()
                    if len(cont) > 1:
                        longer.append((r, i))
            if longer:
                R, Lc = len(longer), max(len(requests[i][1]) - 1 for _, i in longer)
                sel = torch.tensor([r for r, _ in longer], device=dev)
                cache = res.past_key_values
                cache.batch_select_indices(sel)  # (R, ...) rows of the context cache, repeated per continuation
                cids = torch.full((R, Lc), pad, dtype=torch.long)
                mask = torch.zeros(R, T + Lc, dtype=torch.long)
                for k, (r, i) in enumerate(longer):
                    cont = requests[i][1][:-1]
                    cids[k, : len(cont)] = torch.tensor(cont)
                    mask[k, : len(rows[r])] = 1
                    mask[k, T: T + len(cont)] = 1
                pos = lens[sel][:, None] + torch.arange(Lc, device=dev)[None]  # (R, Lc): right after each context
                hid = decoder(input_ids=cids.to(dev), attention_mask=mask.to(dev), position_ids=pos,
                              past_key_values=cache, use_cache=True).last_hidden_state  # (R, Lc, D)
                # every scored position of every continuation through the vocabulary at once: one
                # matrix product instead of a weight-bound matrix-vector product per request
                k_idx = [k for k, (_, i) in enumerate(longer) for _ in requests[i][1][1:]]
                j_idx = [j for _, i in longer for j in range(len(requests[i][1]) - 1)]
                tgt = torch.tensor([t for _, i in longer for t in requests[i][1][1:]], device=dev)
                logp = F.log_softmax(head(hid[k_idx, j_idx]).float(), dim=-1).gather(1, tgt[:, None])[:, 0]  # (S,)
                sums = torch.zeros(R, dtype=torch.float64, device=dev).index_add_(
                    0, torch.tensor(k_idx, device=dev), logp.double())
                for k, (_, i) in enumerate(longer):
                    out[i] += sums[k].item()
            bar.update(sum(len(groups[c]) for c in rows))
        bar.close()
        return out

    @torch.inference_mode()
    def loglik_sequential(self, requests: Sequence[Request]) -> list[float]:
        """The reference path (and the speed benchmark's baseline): one problem at a time, vocabulary
        logits at every context position, continuations from that context's KV cache."""
        head = self.model.get_output_embeddings()
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        out = [0.0] * len(requests)
        bar = tqdm(total=len(requests), desc="loglik", disable=not self.progress, leave=False)
        dev = self.device
        for ctx, members in groups.items():
            conts = [requests[i][1] for i in members]
            res = self.model(input_ids=torch.tensor([ctx], device=dev), use_cache=True,
                             output_hidden_states=True)
            first_logp = F.log_softmax(res.logits[0, -1].float(), dim=-1)  # (V,) predicts cont[0]
            for i, c in zip(members, conts):
                out[i] = first_logp[c[0]].item()
            longer = [(i, c) for i, c in zip(members, conts) if len(c) > 1]
            if longer:
                n, L = len(longer), max(len(c) - 1 for _, c in longer)
                cache = res.past_key_values
                cache.batch_repeat_interleave(n)
                ids = torch.zeros(n, L, dtype=torch.long)
                mask = torch.zeros(n, len(ctx) + L, dtype=torch.long)
                mask[:, : len(ctx)] = 1
                for r, (_, c) in enumerate(longer):
                    ids[r, : len(c) - 1] = torch.tensor(c[:-1])
                    mask[r, len(ctx): len(ctx) + len(c) - 1] = 1
                pos = torch.arange(len(ctx), len(ctx) + L)[None].expand(n, L)
                hidden = self.model.get_decoder()(
                    input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                    past_key_values=cache, use_cache=True,
                ).last_hidden_state  # (n, L, D)
                for r, (i, c) in enumerate(longer):
                    logp = F.log_softmax(head(hidden[r, : len(c) - 1]).float(), dim=-1)  # (len-1, V)
                    out[i] += logp.gather(1, torch.tensor(c[1:], device=dev)[:, None]).sum().item()
            bar.update(len(members))
        bar.close()
        return out

    @torch.inference_mode()
    def greedy(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out: list[list[int]] = [[] for _ in prompts]
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        bar = tqdm(total=len(prompts), desc="generate", disable=not self.progress, leave=False)
        for batch in length_batches(order, [n + max_new_tokens for n in lengths], self.max_batch_tokens, max_rows=16):
            T = max(lengths[i] for i in batch)
            ids = torch.full((len(batch), T), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), T, dtype=torch.long)
            for r, i in enumerate(batch):  # left padding so every row ends at its last prompt token
                ids[r, T - lengths[i]:] = torch.tensor(prompts[i])
                mask[r, T - lengths[i]:] = 1
            gen = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), do_sample=False,
                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                temperature=None, top_p=None, top_k=None,
            )[:, T:]
            for r, i in enumerate(batch):
                row = gen[r].tolist()
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id)]
                out[i] = row
            bar.update(len(batch))
        bar.close()
        return out
