"""The PyTorch backend: log-likelihoods and greedy generation of a Hugging Face model, batched.
Runtimes (``runtimes/``) implement the same two methods on exported artifacts."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batching import TokenTrie, length_batches, shared_prefix

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


class TorchBackend:
    """Batched scoring with right padding (causal attention never sees the pads to the right)."""

    def __init__(self, model, tokenizer, max_batch_tokens: int = 2048, progress: bool = True, tree_nodes: int = 256):
        self.model = model
        self.tree_nodes = tree_nodes  # packed-trie row length: longer rows share more, attention grows as its square
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
        """Sum log p(continuation | context) per request, with every shared token computed once:

        * the prefix all contexts share (the chat template's system turn) runs once per batch and
          its KV cache is copied to every row;
        * the rest of every request (context + continuation but its last token) is merged into a
          token trie, packed into rows of about ``tree_nodes`` nodes (contexts sorted so that
          neighbours share their question templates), and each row runs as one sequence under a
          tree attention mask: a node sees the prefix, its ancestors and itself, at the position it
          has in its own sequence. A problem's choices read one copy of its context; two choices
          that start with the same tokens share them too; there is no padding inside a row;
        * the vocabulary projection runs once per distinct scored node, not at every position.
        Equal to ``loglik_sequential`` within float round-off (tested to 1e-4). Models whose masks
        cannot take the tree (a sliding window shorter than a request, flash kernels) take the
        sequential path."""
        if not requests:
            return []
        if not self._tree_ok(max(len(c) + len(x) for c, x in requests)):
            return self.loglik_sequential(requests)
        head = self.model.get_output_embeddings()
        decoder = self.model.get_decoder()
        dev = self.device
        dtype = self.model.get_input_embeddings().weight.dtype
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        P = shared_prefix(list(groups))  # < the shortest context: every context keeps its last token
        # rows of the packed tree: (trie, [(request, node of each of its tokens after the prefix)])
        chunks: list[tuple[TokenTrie, list[tuple[int, list[int]]]]] = []
        for ctx in sorted(groups):  # lexicographic: problems of one template are neighbours
            conts = [requests[i][1] for i in groups[ctx]]
            if not chunks or (len(chunks[-1][0]) and len(chunks[-1][0]) + chunks[-1][0].new_nodes(ctx[P:])
                              + sum(len(c) - 1 for c in conts) > self.tree_nodes):
                chunks.append((TokenTrie(), []))
            trie, members = chunks[-1]
            for i, c in zip(groups[ctx], conts):
                members.append((i, trie.add(ctx[P:] + tuple(c[:-1]))))
        out = [0.0] * len(requests)
        bar = tqdm(total=len(requests), desc="loglik", disable=not self.progress, leave=False)
        sizes = [len(t) for t, _ in chunks]
        order = sorted(range(len(chunks)), key=lambda c: sizes[c])
        for batch in length_batches(order, sizes, self.max_batch_tokens, max_pad=0.10):
            B, n = len(batch), max(sizes[c] for c in batch)
            ids = torch.full((B, n), pad, dtype=torch.long)
            pos = torch.full((B, n), P, dtype=torch.long)
            allowed = torch.zeros(B, 1, n, P + n, dtype=torch.bool)  # (B, 1, n, P + n): query node x key
            allowed[..., :P] = True  # every node sees the shared prefix
            allowed[:, 0, torch.arange(n), P + torch.arange(n)] = True  # and itself (pads only themselves)
            rows, nodes, tgts, reqs = [], [], [], []
            for r, c in enumerate(batch):
                trie, members = chunks[c]
                k = len(trie)
                ids[r, :k] = torch.tensor(trie.tokens)
                pos[r, :k] = P + torch.tensor(trie.depth)
                allowed[r, 0, :k, P: P + k] = trie.ancestor_mask()
                for i, seq_nodes in members:
                    ctx, cont = requests[i]
                    for j, t in enumerate(cont):  # the node of token len(ctx)-1+j predicts cont[j]
                        rows.append(r)
                        nodes.append(seq_nodes[len(ctx) - 1 + j - P])
                        tgts.append(t)
                        reqs.append(i)
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
            cache = None
            if P:
                cache = decoder(input_ids=torch.tensor([list(next(iter(groups))[:P])], device=dev), use_cache=True).past_key_values
                cache.batch_repeat_interleave(B)  # (B, ...) the same prefix for every row
            hid = decoder(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                          past_key_values=cache, use_cache=cache is not None).last_hidden_state  # (B, n, D)
            # each distinct scored node through the vocabulary once (a problem's choices share their first)
            flat = torch.tensor(rows) * n + torch.tensor(nodes)  # (S,)
            uniq, inv = flat.unique(return_inverse=True)  # (U,), (S,)
            logp = F.log_softmax(head(hid.reshape(B * n, -1)[uniq.to(dev)]).float(), dim=-1)  # (U, V)
            tok_lp = logp[inv.to(dev), torch.tensor(tgts, device=dev)].double()  # (S,)
            sums = torch.zeros(len(requests), dtype=torch.float64, device=dev).index_add_(
                0, torch.tensor(reqs, device=dev), tok_lp)
            vals = sums.tolist()  # one transfer, not an .item() per request
            for i in set(reqs):
                out[i] = vals[i]
            bar.update(sum(len(chunks[c][1]) for c in batch))
        bar.close()
        return out

    def _tree_ok(self, longest: int) -> bool:
        """Can ``loglik`` pass a custom 4D (tree) mask? Not to flash kernels, and not where a sliding
        window shorter than a request would have to be folded into it."""
        impl = getattr(self.model.config, "_attn_implementation", None) or "eager"
        window = getattr(self.model.config, "sliding_window", None)
        return impl in ("sdpa", "eager") and not (window and longest > window)

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
