"""Batched log-likelihood scoring of ``(context, continuation)`` requests, with lm-evaluation-harness's semantics.

Semantics (lme ``HFLM`` for causal models):
- Tokenisation (``encode_pairs``): trailing whitespace of the context moves to the continuation; the continuation's
  tokens are ``tokens(context + continuation)[len(tokens(context)):]``. Both encodings use the tokenizer's default
  special tokens (lme's ``add_bos_token=None``), except that a string already starting with the BOS text is encoded
  without them. With a tokenizer that prepends BOS (ours does), every context starts with BOS. An empty context
  becomes the BOS token (EOS when there is none).
- Scoring: the model input is ``(context + continuation)[-(max_length + 1):][:-1]`` (truncation from the left);
  the score is the sum of the continuation tokens' log-probabilities (log-softmax in fp32) and ``is_greedy`` says
  whether every continuation token is the argmax.

Engine (``Scorer``): requests are turned into model input rows, sharing work where the numbers stay the same:
- contexts share one copy of what they have in common: a *packed* row is a tree that holds a shared prefix
  once, then each context's tail, then each continuation's tokens (all but the last; continuations that differ
  only in their last token share them), with position ids that continue their parent's, each segment seeing
  itself and its ancestors only (SDPA models without a shorter sliding window). On CPU the row's attention
  computes only those scores (``tree_attention.py``: a partial attention per segment, merged by log-sum-exp);
  elsewhere SDPA takes the row's dense 4D mask. The choices of a document share their context; MultiRC's
  questions about one paragraph share the paragraph. A request cut from the left counts as the context its cut
  leaves, so requests whose cuts start at the same token (answers of one length to one question) share too;
- a request whose input row is a prefix of another's (e.g. one-token choices like " yes"/" no") is read off that
  longer row.
Rows are sorted by length (longest first) and packed into batches under a token budget (right padding; plain rows
need no attention mask: causal attention never lets a real token see the padding). Only the positions that
predict continuation tokens go through the LM head (``logits_to_keep`` as a boolean mask), and on CPU only they go
through the last block's attention queries, output projection and MLP (``tree_attention.ScoredQueries``). With
``world_size > 1`` batches are dealt round-robin to ranks, ranks with fewer batches run a dummy forward so that
every rank makes the same number of forward calls (ZeRO-3 gathers parameters collectively), and results are
summed with all-reduce.

The reference it is tested and timed against, one request at a time with full logits and no sharing, is
``naive_loglikelihood`` in bench/eval_bench.py.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core import precision
from core.dist import all_reduce_sum
from core.errors import UnsupportedModelError
from data.tokenizer import batch_ids
from eval.benchmarks.tree_attention import (
    ScoredQueries,
    TreeLayout,
    attention_scores,
    row_partials,
    scored_rows_only,
    supports_tree_attention,
    use_tree_attention,
)
from model.capture import accepts_logits_to_keep, find_decoder_layers

DEFAULT_MAX_LENGTH = 2048  # lme's fallback when neither the model config nor the tokenizer gives a length
_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no model_max_length"

TokenPair = tuple[list[int], list[int]]
log = logging.getLogger("eval")


def resolve_max_length(model_config, tokenizer=None, default: int = DEFAULT_MAX_LENGTH) -> int:
    """The model's context length as lme resolves it: config ``n_positions``/``max_position_embeddings``/``n_ctx``
    (of ``text_config`` when nested), then the tokenizer's ``model_max_length``, then 2048."""
    cfg = getattr(model_config, "text_config", None) or model_config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != _TOKENIZER_INFINITY:
        return int(mml)
    return default


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------

def _prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def _starts_with_bos(tokenizer, s: str) -> bool:
    return bool(tokenizer.bos_token) and s.startswith(tokenizer.bos_token)


def _encode_many(tokenizer, strings: list[str]) -> list[list[int]]:
    """Tokenizer-default special tokens, except none for strings that already start with the BOS text."""
    out: list[list[int]] = [[] for _ in strings]
    prefixed = [_starts_with_bos(tokenizer, s) for s in strings]
    for has_bos in (False, True):
        idx = [i for i, p in enumerate(prefixed) if p == has_bos]
        if idx:
            for i, row in zip(idx, batch_ids(tokenizer, [strings[i] for i in idx], add_special_tokens=not has_bos)):
                out[i] = row
    return out


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[TokenPair]:
    """lme's ``_encode_pair`` for causal models, batched (each distinct context is encoded once)."""
    out: list[TokenPair | None] = [None] * len(pairs)
    split = []
    for i, (ctx, cont) in enumerate(pairs):
        if ctx == "":
            cont_enc = tokenizer(cont, add_special_tokens=False)["input_ids"]
            prefix = _prefix_token_id(tokenizer)
            out[i] = ([prefix], list(cont_enc)) if prefix != cont_enc[0] else (list(cont_enc[:1]), list(cont_enc[1:]))
        else:
            split.append((i, *_split_trailing_space(ctx, cont)))
    contexts = sorted({c for _, c, _ in split})
    ctx_ids = dict(zip(contexts, _encode_many(tokenizer, contexts)))
    wholes = _encode_many(tokenizer, [c + k for _, c, k in split])
    for (i, c, _), whole in zip(split, wholes):
        ce = ctx_ids[c]
        out[i] = (ce, whole[len(ce):])
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------

def model_input(ctx: list[int], cont: list[int], max_length: int) -> tuple[tuple[int, ...], int, list[int]]:
    """(input row, position of the first logit that predicts a scored token, the scored tokens).

    A continuation longer than ``max_length`` (lme asserts here) keeps only its last ``max_length`` tokens."""
    if not cont:
        raise ValueError("empty continuation: nothing to score")
    cont = cont[-max_length:]
    inp = tuple((ctx + cont)[-(max_length + 1):][:-1])
    return inp, len(inp) - len(cont), cont


@dataclass
class Row:
    """One model input row. A packed row is a tree of segments laid out one after another: segment 0 is a shared
    context prefix, then context tails and continuations, each placed at the positions it would have after its
    parent segments alone. A token sees the tokens of its own segment and of its ancestors only."""
    tokens: tuple[int, ...]
    segments: tuple[int, ...] | None = None  # None: a plain causal row
    positions: tuple[int, ...] | None = None  # None: 0 .. len - 1
    parents: tuple[int, ...] | None = None  # parent segment of each segment (-1 for 0); None: every one is 0's

    @property
    def needs_mask(self) -> bool:  # two segments that must not see each other
        return self.segments is not None and len(set(self.segments)) > 2

    def ancestry(self) -> torch.Tensor:
        """[segments + 1, segments + 1] bool: ``a[q, k]`` when segment k is q or an ancestor of q; the last index
        stands for padding (segment -1), which sees only padding."""
        n = max(self.segments) + 1 if self.segments else 1
        parents = self.parents if self.parents is not None else (-1, *[0] * (n - 1))
        a = torch.eye(n + 1, dtype=torch.bool)
        for q in range(1, n):
            k = parents[q]
            while k >= 0:
                a[q, k] = True
                k = parents[k]
        return a


@dataclass
class Plan:
    rows: list[Row]  # longest first
    batches: list[list[int]]  # row indices per batch
    req_row: list[int]  # request -> row that hosts it
    req_pos: list[list[int]]  # request -> positions in its row whose logits predict its scored tokens
    req_cont: list[list[int]]  # request -> scored tokens

    @property
    def num_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.rows)


MIN_SHARED_PREFIX = 32  # tokens: contexts that share fewer than this are not worth a common row


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _prefix_clusters(contexts: list[tuple[int, ...]]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Sorted contexts in runs that share a prefix (its length, the run): a run grows while the tokens it saves
    (its prefix once instead of once per context) do not shrink. Passages asked several questions share a run."""
    runs: list[tuple[int, list[tuple[int, ...]]]] = []
    for ctx in sorted(contexts):
        if runs:
            p, members = runs[-1]
            q = min(p, _common_prefix(members[-1], ctx)) if len(members) > 1 else _common_prefix(members[-1], ctx)
            if q >= MIN_SHARED_PREFIX and len(members) * q >= (len(members) - 1) * p:
                runs[-1] = (q, [*members, ctx])
                continue
        runs.append((len(ctx), [ctx]))
    return runs


def _packed_rows(requests: Sequence[TokenPair], max_length: int,
                 limit: int) -> list[tuple[Row, list[int], list[list[int]]]]:
    """Rows that compute each shared context prefix once, for requests whose input is not truncated: the
    prefix (segment 0), then per context its tail (a segment under 0) and per continuation ``k`` the tokens
    ``k[:-1]`` (a segment under the context's tail); ``k`` is scored from the context's last position and from
    ``k[:-1]``. Contexts equal for every choice of a document, and passages shared by several questions, run once;
    so do the ``k[:-1]`` of a context's continuations that differ in their last token only (MultiRC's "... yes" and
    "... no"). Returns (row, the requests it hosts, each one's positions whose logits predict its continuation)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) + len(cont) <= max_length + 1:
            groups.setdefault(tuple(ctx), []).append(i)
    lead = [tuple(cont[:-1]) for _, cont in requests]  # what a continuation adds to its row
    out = []
    for p, contexts in _prefix_clusters(list(groups)):
        if len(contexts) == 1 and len({lead[i] for i in groups[contexts[0]]} - {()}) < 2:
            continue  # at most one continuation needs tokens of its own: prefix sharing does as well
        prefix = contexts[0][:p]
        units = []  # (context, members) pieces that fit in a row after the prefix
        for ctx in contexts:
            cur, size, leads = [], len(ctx), set()
            for i in groups[ctx]:
                extra = 0 if lead[i] in leads else len(lead[i])
                if cur and size + extra > limit:
                    units.append((ctx, cur))
                    cur, size, leads = [], len(ctx), set()
                    extra = len(lead[i])
                cur.append(i)
                leads.add(lead[i])
                size += extra
            units.append((ctx, cur))
        rows, cur, size = [], [], p
        for ctx, members in units:
            extra = len(ctx) - p + sum(len(t) for t in {lead[i] for i in members})
            if cur and size + extra > limit:
                rows.append(cur)
                cur, size = [], p
            cur.append((ctx, members))
            size += extra
        rows.append(cur)
        for pieces in rows:
            tokens, segs, pos, parents = list(prefix), [0] * p, list(range(p)), [-1]
            hosted, starts = [], []
            for ctx, members in pieces:
                tail = ctx[p:]
                owner = 0
                if tail:
                    owner = len(parents)
                    parents.append(0)
                    tokens += tail
                    segs += [owner] * len(tail)
                    pos += range(p, len(ctx))
                last = len(tokens) - 1 if tail else p - 1  # the context's last position predicts the first token
                seen: dict[tuple[int, ...], list[int]] = {}
                for i in members:
                    cont_tail = lead[i]
                    hosted.append(i)
                    if cont_tail in seen:  # the same tokens up to the scored last one: the same positions
                        starts.append(list(seen[cont_tail]))
                        continue
                    seen[cont_tail] = [last, *range(len(tokens), len(tokens) + len(cont_tail))]
                    starts.append(list(seen[cont_tail]))
                    if cont_tail:
                        parents.append(owner)
                        segs += [len(parents) - 1] * len(cont_tail)
                        tokens += cont_tail
                        pos += range(len(ctx), len(ctx) + len(cont_tail))
            out.append((Row(tuple(tokens), tuple(segs), tuple(pos), tuple(parents)), hosted, starts))
    return out


def plan_requests(requests: Sequence[TokenPair], max_length: int, batch_tokens: int, max_batch_size: int,
                  share_context: bool = False) -> Plan:
    n = len(requests)
    req_row, req_pos, req_cont = [0] * n, [[] for _ in range(n)], [[] for _ in range(n)]
    rows: list[Row] = []
    done = set()
    if share_context:
        # Rows as long as one request may be: longer rows would host more of a passage's questions, but the
        # masked attention of a packed row grows with its length squared, and on CPU at max_length 2048 a
        # 4096-token row cost more than running its passage twice (MultiRC: 33 s against 26 s).
        # A request cut from the left is packed from the context its cut leaves (the same input row): requests
        # whose cuts start at the same token, as answers of one length to a question on a long passage do, then
        # share what their rows have in common
        fitted = [((ctx + cont)[-(max_length + 1):-len(cont)], cont)
                  if max_length + 1 < len(ctx) + len(cont) and len(cont) <= max_length else (ctx, cont)
                  for ctx, cont in requests]
        for row, members, positions in _packed_rows(fitted, max_length, max(max_length + 1, 1024)):
            for i, at in zip(members, positions):
                req_row[i], req_cont[i], req_pos[i] = len(rows), list(requests[i][1]), at
                done.add(i)
            rows.append(row)
    rest = [i for i in range(n) if i not in done]
    cut = sum(len(requests[i][1]) > max_length for i in rest)
    if cut:
        log.warning("%d continuation(s) longer than max_length=%d: only their last %d tokens are scored "
                    "(lm-evaluation-harness would stop here)", cut, max_length, max_length)
    prepared = {i: model_input(*requests[i], max_length) for i in rest}
    # A row that is a prefix of another is hosted by the longest row of its chain: in lexicographic order a
    # sequence's successor starts with it whenever any sequence does.
    host: dict[int, tuple[int, ...]] = {}
    succ: tuple[int, ...] | None = None
    succ_host: tuple[int, ...] = ()
    for i in sorted(rest, key=lambda i: prepared[i][0], reverse=True):
        s = prepared[i][0]
        host[i] = succ_host if succ is not None and succ[:len(s)] == s else s
        succ, succ_host = s, host[i]
    hosts = sorted(set(host.values()))
    plain = {h: len(rows) + j for j, h in enumerate(hosts)}
    rows += [Row(h) for h in hosts]
    for i in rest:
        _, start, cont = prepared[i]
        req_row[i], req_pos[i], req_cont[i] = plain[host[i]], list(range(start, start + len(cont))), cont
    order = sorted(range(len(rows)), key=lambda j: (-len(rows[j].tokens), rows[j].tokens))
    new_index = {old: new for new, old in enumerate(order)}
    rows = [rows[j] for j in order]
    batches: list[list[int]] = []
    for j in range(len(rows)):
        cur = batches[-1] if batches else None
        if cur and len(cur) < max_batch_size and (len(cur) + 1) * len(rows[cur[0]].tokens) <= batch_tokens:
            cur.append(j)
        else:
            batches.append([j])
    return Plan(rows, batches, [new_index[r] for r in req_row], req_pos, req_cont)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def supports_packed_rows(model, max_length: int) -> bool:
    """Packed rows need custom position ids and a 4D boolean mask: SDPA attention, and no sliding window shorter
    than the context (a custom mask would bypass it)."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None)
    return getattr(cfg, "_attn_implementation", None) == "sdpa" and (window is None or window >= max_length)


def run_sharded(n_batches: int, run, dummy, rank: int = 0, world_size: int = 1, desc: str | None = None) -> None:
    """Call ``run(i)`` for the batches of this rank (round-robin) and ``dummy()`` when it has run out, so that every
    rank makes the same number of forward calls (ZeRO-3). ``desc``: show a progress bar on rank 0."""
    steps = math.ceil(n_batches / world_size)
    bar = None
    if desc is not None and rank == 0:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=desc, unit="batch", leave=False)
    for step in range(steps):
        i = step * world_size + rank
        run(i) if i < n_batches else dummy()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


class Scorer:
    """Scores log-likelihood requests with one model; see the module docstring for the semantics."""

    def __init__(self, model, tokenizer, *, device: torch.device | str | None = None,
                 autocast_dtype: torch.dtype | None = None, max_length: int | None = None,
                 batch_tokens: int = 16384, max_batch_size: int = 256, rank: int = 0, world_size: int = 1,
                 progress: bool = False, share_context: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.max_length = max_length or resolve_max_length(getattr(model, "config", None), tokenizer)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.rank, self.world_size = rank, world_size
        self.progress = progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._keep_mask = accepts_logits_to_keep(model)
        self.share_context = share_context and supports_packed_rows(model, self.max_length)
        # On CPU every forward runs the scorer's own attention (eval/benchmarks/tree_attention.py): a packed row
        # computes only the scores its tokens see (where the model's attention would take its dense mask), and
        # the last block answers only the queries whose logits are read
        self._last_block = _last_block(model)
        self.own_attention = (supports_packed_rows(model, self.max_length)
                              and supports_tree_attention(model, self.device) and self._own_attention_agrees())

    def _autocast(self):
        return precision.autocast(self.device, self.autocast_dtype)

    @contextmanager
    def _forward_context(self, own: bool = False, scored: ScoredQueries | None = None):
        """Autocast; with ``own`` the scorer's attention, and with ``scored`` the last block's MLP and output
        projection on the scored rows only."""
        with (self._autocast(), use_tree_attention(self.model) if own else nullcontext(),
              scored_rows_only(self._last_block[1], scored.keep) if scored is not None else nullcontext()):
            yield

    def _inputs(self, rows: list[Row], ids: torch.Tensor, keep: torch.Tensor, own: bool) -> dict:
        """The forward's keyword arguments for a batch of ``rows`` whose ``keep`` [B, L] positions are scored."""
        kwargs = {"input_ids": ids.to(self.device), "use_cache": False}
        if any(row.positions is not None for row in rows):
            kwargs.update(_packed_inputs(rows, ids.shape[1], self.device, own))
        if own and self._last_block is not None:
            usual = attention_scores(kwargs.get("tree"), [len(row.tokens) for row in rows])
            kwargs["scored"] = _scored_queries(rows, keep, self._last_block[0], usual).to(self.device)
        return kwargs

    @torch.no_grad()
    def _own_attention_agrees(self) -> bool:
        """A small packed row (a prefix, two continuations under it) beside a padded plain row, through the model's
        own attention (the packed row's dense mask) and through the scorer's, which also runs the last block on a
        few scored positions only: the same logits there, unless the model's attention layers do not look the
        attention up by its name (they would then see no mask at all), do not pass ``tree`` and ``scored`` on, or
        the last block's MLP does not work row by row. Every rank runs the two forwards, so their counts stay
        equal (ZeRO-3)."""
        rows = [Row(tuple(range(1, 8)), (0, 0, 0, 1, 1, 2, 2), (0, 1, 2, 3, 4, 3, 4), (-1, 0, 0)),
                Row(tuple(range(3, 8)))]
        ids = torch.tensor([rows[0].tokens, (*rows[1].tokens, self.pad_id, self.pad_id)])
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[0, [2, 4, 6]] = keep[1, [1, 4]] = True
        logits = []
        for own in (False, True):
            kwargs = self._inputs(rows, ids, keep, own)
            try:
                with self._forward_context(own, kwargs.get("scored")):
                    logits.append(self.model(**kwargs).logits[keep.to(self.device)].float())
            except Exception as e:  # noqa: BLE001 - whatever the model makes of it, its own attention still works
                log.info("the scorer's attention is unavailable for this model (%s): packed rows take the dense mask",
                         e)
                return False
        agree = torch.allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3)
        if not agree:
            log.info("the scorer's attention changes this model's logits: packed rows take the dense mask")
        return agree

    def dummy_forward(self) -> None:
        with self._autocast():
            self.model(input_ids=torch.full((1, 1), self.pad_id, device=self.device), use_cache=False)

    def plan(self, requests: Sequence[TokenPair]) -> Plan:
        return plan_requests(requests, self.max_length, self.batch_tokens, self.max_batch_size, self.share_context)

    @torch.no_grad()
    def score_tokens(self, requests: Sequence[TokenPair], plan: Plan | None = None,
                     desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
        """(summed log-likelihoods as float64, is_greedy as bool), one per request, on every rank."""
        plan = plan or self.plan(requests)
        n = len(plan.req_row)
        lls = torch.zeros(n, dtype=torch.float64, device=self.device)
        miss = torch.zeros(n, dtype=torch.float64, device=self.device)  # tokens that are not the argmax
        by_row: list[list[int]] = [[] for _ in plan.rows]
        for i, r in enumerate(plan.req_row):
            by_row[r].append(i)
        run_sharded(len(plan.batches), lambda i: self._score_batch(plan, plan.batches[i], by_row, lls, miss),
                    self.dummy_forward, self.rank, self.world_size, desc if self.progress else None)
        all_reduce_sum(lls)
        all_reduce_sum(miss)
        return lls.cpu().numpy(), (miss == 0).cpu().numpy()

    def _score_batch(self, plan: Plan, batch: list[int], by_row, lls: torch.Tensor, miss: torch.Tensor) -> None:
        rows = [plan.rows[r] for r in batch]
        width = len(rows[0].tokens)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        for b, (r, row) in enumerate(zip(batch, rows)):
            ids[b, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            for i in by_row[r]:
                keep[b, plan.req_pos[i]] = True
        # flat index (in the row-major order of keep's True entries) of each scored token
        flat = torch.cumsum(keep.flatten().long(), 0).view_as(keep) - 1
        sel, tgt, owner = [], [], []
        for b, r in enumerate(batch):
            for i in by_row[r]:
                sel.append(flat[b, plan.req_pos[i]])
                tgt.extend(plan.req_cont[i])
                owner.extend([i] * len(plan.req_cont[i]))
        sel_t = torch.cat(sel).to(self.device)
        tgt_t = torch.tensor(tgt, dtype=torch.long, device=self.device)
        owner_t = torch.tensor(owner, dtype=torch.long, device=self.device)
        kwargs = self._inputs(rows, ids, keep, self.own_attention)
        if self._keep_mask:
            kwargs["logits_to_keep"] = keep.to(self.device)
        with self._forward_context(self.own_attention, kwargs.get("scored")):
            logits = self.model(**kwargs).logits
        if logits.dim() == 3:  # the model ignored logits_to_keep (or does not take it)
            logits = logits[keep.to(self.device)]
        logits = _at_least_fp32(logits[sel_t])
        logp = F.log_softmax(logits, dim=-1).gather(1, tgt_t[:, None]).squeeze(1)
        lls.index_add_(0, owner_t, logp.double())
        miss.index_add_(0, owner_t, (logits.argmax(-1) != tgt_t).double())


def _last_block(model) -> tuple[int, list[torch.nn.Module]] | None:
    """The last decoder block's index (its attention's ``layer_idx``) and its row-wise modules after the attention
    (output projection, MLP), where the block has transformers' usual names; else None (it then runs whole)."""
    try:
        block = find_decoder_layers(model)[-1]
    except UnsupportedModelError:
        return None
    attn = getattr(block, "self_attn", None)
    modules = [getattr(attn, "o_proj", None), getattr(block, "mlp", None)]
    if getattr(attn, "layer_idx", None) is None or not all(isinstance(m, torch.nn.Module) for m in modules):
        return None
    return attn.layer_idx, modules


def _scored_queries(rows: list[Row], keep: torch.Tensor, layer: int, usual: int) -> ScoredQueries:
    """The scored positions ``keep`` [B, L] of a batch of ``rows`` for the last block: as its queries too (each
    row's in order, the first repeated to fill, with the keys ``_visible`` to them) unless their masked kernel
    would compute more scores than the ``usual`` attention of all queries does."""
    counts = keep.sum(1)
    m = int(counts.max())
    # a masked kernel computes every score of its [queries, keys] square, at 0.6-1.9x the causal flash kernel's
    # cost per score (CPU, 256-2,048 keys, docs/PERFORMANCE.md)
    if len(rows) * m * keep.shape[1] >= usual:
        return ScoredQueries(layer, keep)
    first_kept = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :m]
    index = torch.where(torch.arange(m)[None] < counts[:, None], first_kept, first_kept[:, :1])
    return ScoredQueries(layer, keep, index, _visible(rows, keep.shape[1], index)[:, None])


def _visible(rows: list[Row], width: int, queries: torch.Tensor) -> torch.Tensor:
    """[B, Q, width] bool: the keys that the ``queries`` [B, Q] (positions) of each row see: causal, and a key is
    visible if its segment is the query's own or one of its ancestors (``Row.ancestry``). Padding (segment -1) is
    never visible to a real token; a padding query sees itself."""
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        seg[b, :len(row.tokens)] = torch.tensor(row.segments) if row.segments is not None else 0
    causal = torch.arange(width)[None, None] <= queries[:, :, None]
    return causal & torch.stack([row.ancestry()[seg[b][queries[b]][:, None], seg[b][None, :]]
                                 for b, row in enumerate(rows)])


def _packed_inputs(rows: list[Row], width: int, device, tree: bool = False) -> dict[str, torch.Tensor | TreeLayout]:
    """position_ids, and when a row holds several continuations either the rows' ``TreeLayout`` (``tree``, for
    ``tree_attention``) or a [batch, 1, query, key] boolean attention mask (``_visible``: no row of it is empty)."""
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        pos[b, :n] = torch.tensor(row.positions) if row.positions is not None else torch.arange(n)
    out: dict[str, torch.Tensor | TreeLayout] = {"position_ids": pos.to(device)}
    if not any(row.needs_mask for row in rows):
        return out
    partials = [row_partials(row.segments, row.parents, len(row.tokens)) for row in rows] if tree else [None]
    if all(p is not None for p in partials):
        out["tree"] = TreeLayout(partials)
        return out
    queries = torch.arange(width).expand(len(rows), width)
    out["attention_mask"] = _visible(rows, width, queries)[:, None].to(device)
    return out
