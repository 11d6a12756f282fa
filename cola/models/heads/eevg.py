"""The official grounding head: the EEVG decoder with visual-token elimination, a box MLP and a per-token mask head.

Built from the official CoLA grounding model (peterwisu/CoLA d26d99d, ``vision_language/CoLA/models/EEVG.py``,
``models/decoder.py``, ``models/decoder_layer/``; each fact below cites where it is read, ``docs/reproduction.md`` has
the full card). With W the head width (official ``--vl_hidden_dim`` 768, ``train.py:159``):

1. ``visu_proj`` / ``text_proj``: Linear(tower width -> W) on the last-layer visual patch tokens and text tokens
   (``EEVG.py:100-101,243-245``). Prefix tokens (CLS, registers) of the vision tower are dropped (ViTDet has none).
2. Learned ``reg_token`` (1 x W), ``visual_pos`` ((patches + 1) x W, the [REG] slot first) and ``text_pos``
   (max_query_len x W), nn.Embedding's N(0, 1) init (``EEVG.py:82-84``).
3. A decoder of ``layers`` layers (``--vl_enc_layers 3``, ``train.sh:59``) whose *queries* are ``[REG; visual]``
   (query position ``visual_pos``) and whose *memory* is the text (position ``text_pos``, padding masked)
   (``EEVG.py:250-261``). Each layer (``decoder.py:30-58``): self-attention over the queries (q = k = x + pos,
   v = x), residual, post-LayerNorm; cross-attention to the text (q = x + pos, k = text + text_pos, v = text),
   residual, post-LayerNorm; ReLU FFN (``--dim_feedforward 1024``, ``train.sh:60``), residual, post-LayerNorm.
   8 heads, dropout 0.1 (``EEVG.py:88``). A final LayerNorm over every token (``decoder.py:100``, ``:268``).
4. Init (``decoder.py:71-74`` then ``:273-276``): every decoder weight matrix ends Xavier-*uniform* (the
   Xavier-normal init of the decoder's Linear layers is overwritten by ``TransformerDecoder._reset_parameters``),
   every decoder bias zero; LayerNorms weight 1, bias 0; the projections and heads keep PyTorch's defaults.
5. Box head: ``MLP(W, W, 4, 3 layers)`` + sigmoid on the final [REG] token (``EEVG.py:103,282``), normalised
   (cx, cy, w, h).
6. Mask head: ``MLP(W, W, p*p, 2 layers)`` on every surviving visual token, scattered back to its patch with zeros
   for eliminated tokens, tiled into the S x S map, ``Conv2d(1, 1, 5, padding=2)`` (``EEVG.py:97-98,262-275``).
   The official code then applies a sigmoid; this head returns the logits (the task's focal and Dice losses take
   logits once: docs/official_settings.md#deliberate-differences). p = S / grid side (official hard-codes 16 for
   ViTDet's 28 x 28 grid at 448 px; DINOv2-B/14 at 448 gives p = 14).

**Visual-token elimination** (``--is_eliminate``, ``train.sh:52``; ``decoder.py:136-153``, attention logits taken
in ``multi_head_attention.py:686-706``): in every decoder layer's self-attention, the [REG] query's attention
logits over the current visual tokens (averaged over heads, before the softmax) are soft-maxed over those tokens,
scattered onto the full patch grid (eliminated positions take the sample's minimum), averaged over each token's
3 x 3 neighbourhood (a neighbour outside the grid counts as the token itself; always / 9) and min-max normalised per
sample. ``size`` = the batch-wide minimum count of tokens under ``eliminate_threshold`` (``--eliminated_threshold``
0.015, ``train.py:165``); the ``size`` lowest tokens are dropped, except a random subset of them (each kept with
probability ``eliminate_keep`` = 0.1, ``decoder.py:146-147``: ``rand >= 0.9``; one draw per rank position, shared by
the batch). Dropping happens after the self-attention of the layer (its output and residual are gathered,
``decoder.py:34-36``), so the cross-attention, the FFN and the next layers see the survivors only. It runs in
training and evaluation alike, as in the official code. One difference: where no token falls under the threshold
(``size`` = 0, e.g. a uniform attention) the official indexing would fail; here every token is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .grounding import HeadGeometry, TokenMaskHead, check_grounding_inputs

__all__ = ["EEVGDecoder", "EEVGDecoderLayer", "EEVGHead", "neighbour_index", "select_tokens"]


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last), as the official ``MLP``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def neighbour_index(grid_size: int) -> torch.Tensor:
    """(g*g, 9) flat indices of each patch's 3 x 3 neighbourhood, row-major; an out-of-grid neighbour is the patch
    itself (the official elimination's edge rule)."""
    g = grid_size
    r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    r, c = r.reshape(-1, 1), c.reshape(-1, 1)  # (g*g, 1)
    dr = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1])
    dc = torch.tensor([-1, 0, 1, -1, 0, 1, -1, 0, 1])
    nr, nc = r + dr, c + dc  # (g*g, 9)
    inside = (nr >= 0) & (nr < g) & (nc >= 0) & (nc < g)
    return torch.where(inside, nr * g + nc, r * g + c)


def select_tokens(
    reg_logits: torch.Tensor,
    index: torch.Tensor,
    neighbours: torch.Tensor,
    *,
    threshold: float,
    keep: float,
) -> torch.Tensor:
    """Which current visual tokens survive one elimination step (module docstring).

    Args:
        reg_logits: (B, n) the [REG] query's head-averaged attention logits over the n current visual tokens.
        index: (B, n) each current token's position on the full patch grid.
        neighbours: (g*g, 9) :func:`neighbour_index` of the grid.
        threshold: min-max normalised score under which a token may be dropped.
        keep: probability that each of the dropped rank positions is kept anyway.

    Returns:
        (B, k) positions (0..n-1) among the current tokens, ascending.
    """
    weights = reg_logits.float().softmax(dim=-1)  # (B, n)
    B, n = weights.shape
    full = weights.min(dim=-1, keepdim=True).values.expand(B, neighbours.shape[0]).clone()  # (B, g*g)
    full.scatter_(1, index, weights)
    smooth = full[:, neighbours].sum(dim=-1) / 9  # (B, g*g) 3 x 3 mean
    score = smooth.gather(1, index)  # (B, n)
    order = score.argsort(dim=-1, descending=True)
    lo, hi = score.min(dim=-1, keepdim=True).values, score.max(dim=-1, keepdim=True).values
    size = int(((score - lo) / (hi - lo) < threshold).sum(dim=-1).min())
    if size == 0:  # nothing under the threshold in some sample (or a flat score): keep every token
        return torch.arange(n, device=index.device).expand(B, n)
    spared = torch.rand(size, device=index.device) >= 1.0 - keep  # one draw per rank position, shared by the batch
    kept = torch.cat([order[:, : n - size], order[:, n - size :][:, spared]], dim=1)
    return kept.sort(dim=-1).values


class _Attention(nn.Module):
    """Multi-head attention (``nn.MultiheadAttention``'s parameters: ``in_proj_weight`` (3W, W), ``in_proj_bias``,
    ``out_proj``) that can also return the first query's head-averaged logits, which the elimination reads."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"task.head.width ({width}) must be divisible by task.head.heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        *,
        first_query_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, N, W), key / value (B, M, W), key_padding_mask (B, M) True = padding.

        Returns the output (B, N, W) and, with ``first_query_logits``, (B, M) logits of query 0 averaged over heads.
        """
        B, N, W = query.shape
        h = self.heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = F.linear(query, wq, bq).view(B, N, h, -1).transpose(1, 2)  # (B, h, N, W/h)
        k = F.linear(key, wk, bk).view(B, key.shape[1], h, -1).transpose(1, 2)  # (B, h, M, W/h)
        v = F.linear(value, wv, bv).view(B, value.shape[1], h, -1).transpose(1, 2)
        attend = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        out = self.out_proj(out.transpose(1, 2).reshape(B, N, W))  # (B, N, W)
        logits = None
        if first_query_logits:
            with torch.no_grad():
                logits = (q[:, :, :1] @ k.transpose(-1, -2))[:, :, 0].mean(dim=1) / math.sqrt(q.shape[-1])  # (B, M)
                if key_padding_mask is not None:
                    logits = logits.masked_fill(key_padding_mask, float("-inf"))
        return out, logits


class EEVGDecoderLayer(nn.Module):
    """Self-attention over [REG; visual] -> cross-attention to the text -> ReLU FFN, each residual + post-norm."""

    def __init__(self, width: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = _Attention(width, heads, dropout)
        self.cross_attn = _Attention(width, heads, dropout)
        self.linear1 = nn.Linear(width, ff)
        self.linear2 = nn.Linear(ff, width)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_pad: torch.Tensor | None,
        select: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x, pos (B, 1 + n, W) queries [REG; visual] and their positions; memory (B, L, W) text, memory_pos
        (1 or B, L, W), memory_pad (B, L) True = padding. ``select``: None, or the elimination step mapping the
        [REG] logits (B, n) over the visual tokens to the kept positions (B, k).

        Returns (x, pos) for the surviving queries and the kept positions (or None).
        """
        qk = x + pos
        attn, reg_logits = self.self_attn(qk, qk, x, first_query_logits=select is not None)
        kept = None
        if select is not None:
            kept = select(reg_logits[:, 1:])  # (B, k) among the visual tokens
            rows = torch.cat([kept.new_zeros(kept.shape[0], 1), kept + 1], dim=1)[..., None]  # (B, 1 + k, 1)
            x, attn, pos = (t.gather(1, rows.expand(-1, -1, t.shape[-1])) for t in (x, attn, pos))
        x = self.norm1(x + self.dropout1(attn))
        attn, _ = self.cross_attn(x + pos, memory + memory_pos, memory, memory_pad)
        x = self.norm2(x + self.dropout2(attn))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, pos, kept


class EEVGDecoder(nn.Module):
    """``layers`` :class:`EEVGDecoderLayer` + a final LayerNorm, with optional visual-token elimination.

    Args:
        width, layers, ff, heads, dropout: the decoder's shape (official 768, 3, 1024, 8, 0.1).
        grid_size: side of the visual patch grid.
        eliminate: drop low-attention visual tokens in every layer (module docstring).
        eliminate_threshold: normalised score under which a token may be dropped (official 0.015).
        eliminate_keep: chance that each droppable rank position is kept anyway (official 0.1).
    """

    def __init__(
        self,
        width: int,
        layers: int,
        ff: int,
        heads: int,
        dropout: float,
        *,
        grid_size: int,
        eliminate: bool,
        eliminate_threshold: float = 0.015,
        eliminate_keep: float = 0.1,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EEVGDecoderLayer(width, heads, ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.eliminate = eliminate
        self.threshold = float(eliminate_threshold)
        self.keep = float(eliminate_keep)
        self.register_buffer("neighbours", neighbour_index(grid_size), persistent=False)
        for p in self.parameters():  # official: Xavier-uniform on every matrix, zero biases (module docstring)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            for m in (layer.linear1, layer.linear2, layer.self_attn.out_proj, layer.cross_attn.out_proj):
                nn.init.zeros_(m.bias)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_pad: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries / query_pos (B, 1 + n, W) [REG; visual]; memory (B, L, W); memory_pos (1 or B, L, W);
        memory_pad (B, L) True = padding.

        Returns the normalised surviving queries (B, 1 + k, W) and their visual tokens' grid positions (B, k).
        """
        B, n = queries.shape[0], queries.shape[1] - 1
        index = torch.arange(n, device=queries.device).expand(B, n)  # (B, n) grid position of each visual token
        x, pos = queries, query_pos.expand(B, -1, -1)
        for layer in self.layers:
            select = partial(self._select, index=index) if self.eliminate else None
            x, pos, kept = layer(x, pos, memory, memory_pos, memory_pad, select)
            if kept is not None:
                index = index.gather(1, kept)
        return self.norm(x), index

    def _select(self, reg_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return select_tokens(reg_logits, index, self.neighbours, threshold=self.threshold, keep=self.keep)


class EEVGHead(nn.Module):
    """The official grounding head (module docstring): projections, learned positions, the EEVG decoder, box MLP on
    [REG] and the per-token mask head.

    Args:
        geometry: token widths, prefix tokens, patch grid, image size (mask logits are S x S; a multiple of
            ``grid_size``) and ``max_text_len``, the length of the learned text positions (:class:`HeadGeometry`).
        width, layers, ff, heads, dropout: decoder shape (official 768, 3, 1024, 8, 0.1).
        eliminate, eliminate_threshold, eliminate_keep: visual-token elimination (official on, 0.015, 0.1).
    """

    def __init__(
        self,
        geometry: HeadGeometry,
        *,
        width: int = 768,
        layers: int = 3,
        ff: int = 1024,
        heads: int = 8,
        dropout: float = 0.1,
        eliminate: bool = True,
        eliminate_threshold: float = 0.015,
        eliminate_keep: float = 0.1,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(
                f"task.head.layers must be >= 1 for the official head, got {layers} (layers=0, no fusion, is an "
                "ablation of the fusion head: task.head.name=fusion task.head.fusion_box=spatial)"
            )
        grid_size, image_size = geometry.grid_size, geometry.image_size
        self.num_prefix_tokens = geometry.num_prefix_tokens
        self.grid_size = grid_size
        self.image_size = image_size
        self.visu_proj = nn.Linear(geometry.vision_dim, width)
        self.text_proj = nn.Linear(geometry.text_dim, width)
        self.reg_token = nn.Parameter(torch.randn(1, width))
        self.visual_pos = nn.Parameter(torch.randn(grid_size * grid_size + 1, width))
        self.text_pos = nn.Parameter(torch.randn(geometry.max_text_len, width))
        self.decoder = EEVGDecoder(
            width,
            layers,
            ff,
            heads,
            dropout,
            grid_size=grid_size,
            eliminate=eliminate,
            eliminate_threshold=eliminate_threshold,
            eliminate_keep=eliminate_keep,
        )
        self.box_head = _mlp([width, width, width, 4])
        self.mask_head = TokenMaskHead(width, grid_size, image_size)

    def forward(
        self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """vision_tokens (B, P + h*w, vision_dim), text_tokens (B, L, text_dim), text_mask (B, L) True/1 = real.

        Returns ``box`` (B, 4) normalised (cx, cy, w, h) and ``mask_logits`` (B, S, S).
        """
        check_grounding_inputs(vision_tokens, text_tokens, text_mask, self.num_prefix_tokens, self.grid_size)
        L = text_tokens.shape[1]
        if L > self.text_pos.shape[0]:
            raise ValueError(
                f"the text has {L} tokens, more than the head's {self.text_pos.shape[0]} learned text positions "
                "(data.max_query_len)"
            )
        B = vision_tokens.shape[0]
        visual = self.visu_proj(vision_tokens[:, self.num_prefix_tokens :])  # (B, n, W)
        queries = torch.cat([self.reg_token.expand(B, 1, -1).to(visual.dtype), visual], dim=1)  # (B, 1 + n, W)
        memory = self.text_proj(text_tokens)  # (B, L, W)
        out, index = self.decoder(
            queries, self.visual_pos[None], memory, self.text_pos[None, :L], ~text_mask.bool()
        )  # (B, 1 + k, W), (B, k)
        box = self.box_head(out[:, 0]).sigmoid()  # (B, 4)
        return {"box": box, "mask_logits": self.mask_head.from_tokens(out[:, 1:], index)}
