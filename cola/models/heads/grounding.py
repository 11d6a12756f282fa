"""Vision-language fusion with a box head (REC) and a mask head (RES) for visual grounding (docs/metrics.md#tasks).

The visual patch tokens (prefix tokens such as CLS/registers dropped) and the text tokens are projected to
``d_fusion`` and concatenated after a learnable [REG] token; a few pre-norm transformer encoder layers fuse
``[REG; visual; text]`` with the text padding masked out of the attention keys. The box head reads [REG];
the mask head turns the fused visual tokens into mask logits at the input resolution S x S.

Box heads (``box_head``), both normalised (cx, cy, w, h) in [0, 1]:

- ``mlp`` (official, TransVG-style): a 3-layer MLP on the fused [REG] token and a sigmoid.
- ``spatial`` (this repo's option for short runs): [REG] queries the fused visual tokens once (single-head
  dot-product attention); the centre is the attention-weighted mean of the patch centres (a soft-argmax),
  width and height come from an MLP on [REG] and the attended visual feature. Coordinates are then read from
  where [REG] attends instead of being regressed from scratch, which converges in a few hundred steps where
  the MLP needs thousands (the tiny CPU model uses it; ``dinov2_bert`` keeps ``mlp``).

Mask heads (``mask_head``), both (B, S, S) logits at the input resolution (the losses and metrics take logits):

- ``official`` (:class:`TokenMaskHead`, the official per-token head): an MLP on every fused visual token gives
  that patch's p x p pixel block (p = S / grid side), the blocks are tiled back into the S x S map and one 5x5
  conv refines it.
- ``conv`` (:class:`MaskDecoder`, this repo's option): the fused tokens reshaped to the patch grid, a light conv
  decoder with x2 upsampling stages and a bilinear resize to S x S (the tiny CPU model uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice

__all__ = ["BOX_HEADS", "MASK_HEADS", "GroundingHead", "HeadGeometry", "MaskDecoder", "TokenMaskHead", "sincos_2d"]

BOX_HEADS = ("mlp", "spatial")
MASK_HEADS = ("official", "conv")


def check_grounding_inputs(
    vision_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: int,
) -> None:
    """The checks both grounding heads make on their inputs: ``num_prefix_tokens + grid_size^2`` vision tokens and
    one mask entry per text token (a ``ValueError`` naming the numbers otherwise)."""
    n_grid = grid_size * grid_size
    if vision_tokens.shape[1] != num_prefix_tokens + n_grid:
        raise ValueError(
            f"vision_tokens has {vision_tokens.shape[1]} tokens, expected num_prefix_tokens "
            f"({num_prefix_tokens}) + grid_size^2 ({grid_size}^2 = {n_grid}); "
            "check that image_size matches the data's input size"
        )
    if text_mask.shape != text_tokens.shape[:2]:
        raise ValueError(f"text_mask shape {tuple(text_mask.shape)} != text tokens {tuple(text_tokens.shape[:2])}")


def sincos_2d(grid_size: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions of a ``grid_size`` x ``grid_size`` grid, row-major: (grid_size^2, dim).

    A quarter of the channels each for sin(x), cos(x), sin(y), cos(y) at geometric frequencies (as DETR /
    TransVG's visual positions); ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float32), torch.arange(grid_size, dtype=torch.float32), indexing="ij"
    )
    freqs = temperature ** (-torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # (dim/4,)
    ax, ay = xs.reshape(-1, 1) * freqs, ys.reshape(-1, 1) * freqs  # (g*g, dim/4)
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)  # (g*g, dim)


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: grounding batches are small and eval must not depend on batch stats
    return nn.GroupNorm(math.gcd(8, channels), channels)


class MaskDecoder(nn.Module):
    """Conv + x2 upsampling stages from the patch grid, a 1x1 conv to one logit, bilinear to ``image_size``.

    Args:
        in_dim: channels of the fused visual tokens.
        image_size: side S of the output logits.
        stages: number of conv + upsample stages (each halves the channels, floor 16).
    """

    def __init__(self, in_dim: int, image_size: int, *, stages: int = 2) -> None:
        super().__init__()
        self.image_size = image_size
        layers: list[nn.Module] = []
        channels = in_dim
        for _ in range(stages):
            out = max(16, channels // 2)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                _group_norm(out),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
            channels = out
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), _group_norm(channels), nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) fused visual features -> (B, S, S) mask logits."""
        x = self.out(self.body(grid))  # (B, 1, h * 2^stages, w * 2^stages)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x[:, 0]  # (B, S, S)


class TokenMaskHead(nn.Module):
    """The official per-token mask head: each fused visual token predicts its own patch's pixel block.

    Follows the official vision-language grounding model (``vision_language/CoLA/models/EEVG.py``, segmentation
    branch): a 2-layer MLP ``Linear(d, d) -> ReLU -> Linear(d, p * p)`` on every fused visual token (hidden width
    = the fusion width, ReLU, no activation after the last layer, PyTorch default init), the (B, h*w, p*p)
    blocks tiled row-major back into a (B, 1, h*p, w*p) map (token (r, c), block entry (i, j) -> pixel
    (r*p + i, c*p + j), i.e. ``pixel_shuffle`` with the block as channels), then one ``Conv2d(1, 1, 5,
    padding=2)`` (with bias) over the full-resolution map.

    Differences from the official code, on purpose: the official model hard-codes 16 x 16 blocks (its 448-px
    input and 28 x 28 grid) and applies a sigmoid at the end; here p = ``image_size / grid_size`` and the head
    returns logits (the task's focal and Dice losses take logits once). The official decoder may drop visual
    tokens (token elimination) and scatters zeros into their blocks; this repo's fusion keeps every token.

    Args:
        in_dim: width of the fused visual tokens (and of the MLP's hidden layer).
        grid_size: side h = w of the square patch grid.
        image_size: side S of the output logits; must be a multiple of ``grid_size``.
    """

    def __init__(self, in_dim: int, grid_size: int, image_size: int) -> None:
        super().__init__()
        if grid_size <= 0 or image_size % grid_size:
            raise ValueError(
                f"mask_head='official' tiles one pixel block per patch token, so image_size ({image_size}) must be a "
                f"multiple of the patch grid side ({grid_size}); use image_size = grid_size * patch_size or "
                "mask_head='conv'"
            )
        self.grid_size = grid_size
        self.image_size = image_size
        self.patch = image_size // grid_size
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, self.patch * self.patch))
        self.refine = nn.Conv2d(1, 1, 5, padding=2)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) fused visual features -> (B, S, S) mask logits."""
        _, _, h, w = grid.shape
        if h != self.grid_size or w != self.grid_size:
            raise ValueError(f"expected a {self.grid_size} x {self.grid_size} grid, got {h} x {w}")
        return self.from_tokens(grid.flatten(2).transpose(1, 2))

    def from_tokens(self, tokens: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k, C) visual tokens at grid positions ``index`` (B, k) (None: all h*w in order) -> (B, S, S) logits.

        The blocks of grid positions without a token are zeros (the official head after token elimination).
        """
        B, g, p = tokens.shape[0], self.grid_size, self.patch
        blocks = self.mlp(tokens)  # (B, k, p*p), one pixel block per token
        if index is not None:
            full = blocks.new_zeros(B, g * g, p * p)
            blocks = full.scatter(1, index[..., None].expand(-1, -1, p * p), blocks)  # (B, g*g, p*p)
        x = blocks.reshape(B, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(B, 1, g * p, g * p)  # (B, 1, S, S)
        return self.refine(x)[:, 0]  # (B, S, S)


@dataclass(frozen=True)
class HeadGeometry:
    """What a grounding head reads off the towers and the data: token widths and the layout of both sequences.

    Attributes:
        vision_dim: hidden size of the vision tower's tokens.
        text_dim: hidden size of the text tower's tokens.
        num_prefix_tokens: leading non-patch tokens of the vision sequence (CLS, registers), dropped by the heads.
        grid_size: side of the square patch grid (image_size // patch_size).
        image_size: side S of the square input image; mask logits are produced at S x S.
        max_text_len: longest text sequence (``data.max_query_len``, official 40); the length of the official
            head's learned text positions (the fusion head has none).
    """

    vision_dim: int
    text_dim: int
    num_prefix_tokens: int
    grid_size: int
    image_size: int
    max_text_len: int = 40


class GroundingHead(nn.Module):
    """Fusion transformer over ``[REG; visual; text]`` with box and mask heads.

    Args:
        geometry: token widths, prefix tokens, patch grid and image size (:class:`HeadGeometry`).
        d_fusion: width of the fusion layers.
        fusion_layers: number of transformer encoder layers; 0 fuses nothing: the box and mask heads read the
            visual tokens alone (after a LayerNorm) and the text tokens are not used, so the expression can reach
            the prediction only through the towers (CoLA's inter-modal path; the no-fusion ablation). Needs
            ``box_head="spatial"``.
        d_ff: feed-forward width of the fusion layers.
        heads: attention heads of the fusion layers.
        dropout: dropout inside the fusion layers.
        box_head: ``mlp`` (official) | ``spatial`` (soft-argmax over the patch grid; see the module docstring).
        mask_head: ``official`` (per-token MLP to pixel blocks + 5x5 conv, :class:`TokenMaskHead`) | ``conv``
            (conv decoder on the patch grid, :class:`MaskDecoder`).
    """

    def __init__(
        self,
        geometry: HeadGeometry,
        d_fusion: int = 256,
        fusion_layers: int = 3,
        d_ff: int = 1024,
        heads: int = 8,
        dropout: float = 0.1,
        box_head: str = "mlp",
        mask_head: str = "conv",
    ) -> None:
        """Long because it builds the fusion transformer and the selected box and mask heads from its documented
        arguments.
        """
        super().__init__()
        grid_size, image_size = geometry.grid_size, geometry.image_size
        check_choice("box_head", box_head, BOX_HEADS)
        check_choice("mask_head", mask_head, MASK_HEADS)
        if fusion_layers < 0:
            raise ValueError(
                f"task.head.layers (fusion_layers) must be >= 0 (0: no fusion, the text unused), got {fusion_layers}"
            )
        if fusion_layers == 0 and box_head == "mlp":
            raise ValueError(
                "task.head.layers=0 (fusion_layers) needs task.head.fusion_box=spatial (box_head), got 'mlp': "
                "without fusion [REG] never sees the image, and the 'mlp' box head reads [REG] alone (every box would "
                "be the same)"
            )
        if d_fusion % heads != 0:
            raise ValueError(f"d_fusion ({d_fusion}) must be divisible by the fusion heads ({heads})")
        if grid_size <= 0 or image_size <= 0:
            raise ValueError(f"grid_size and image_size must be positive, got {grid_size} and {image_size}")
        self.num_prefix_tokens = geometry.num_prefix_tokens
        self.grid_size = grid_size
        self.image_size = image_size
        self.vision_proj = nn.Linear(geometry.vision_dim, d_fusion)
        # no fusion layer: nothing reads the text, so no text projection is built (no parameter without a gradient)
        self.text_proj = nn.Linear(geometry.text_dim, d_fusion) if fusion_layers else None
        self.reg_token = nn.Parameter(torch.zeros(1, 1, d_fusion))
        # The towers' own positions are mixed into their tokens; the fusion gets explicit ones: fixed 2-D sin-cos
        # positions of the patch grid (what the box regression reads its coordinates from, as in TransVG) plus a
        # learned residual, and a type embedding per modality (0 = [REG], 1 = visual, 2 = text).
        self.register_buffer("visual_sincos", sincos_2d(grid_size, d_fusion)[None], persistent=False)
        self.visual_pos = nn.Parameter(torch.zeros(1, grid_size * grid_size, d_fusion))
        self.type_embed = nn.Parameter(torch.zeros(3, d_fusion))
        self.fusion: nn.Module
        if fusion_layers:
            layer = nn.TransformerEncoderLayer(
                d_fusion, heads, d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.fusion = nn.TransformerEncoder(
                layer, fusion_layers, norm=nn.LayerNorm(d_fusion), enable_nested_tensor=False
            )
        else:  # no fusion layer (none is built): the final norm alone
            self.fusion = nn.LayerNorm(d_fusion)
        self.box_head_kind = box_head
        if box_head == "mlp":
            self.box_head = nn.Sequential(
                nn.Linear(d_fusion, d_fusion),
                nn.ReLU(),
                nn.Linear(d_fusion, d_fusion),
                nn.ReLU(),
                nn.Linear(d_fusion, 4),
            )
        else:
            self.box_query = nn.Linear(d_fusion, d_fusion)
            self.box_key = nn.Linear(d_fusion, d_fusion)
            self.box_head = nn.Sequential(nn.Linear(2 * d_fusion, d_fusion), nn.ReLU(), nn.Linear(d_fusion, 2))
            centres = (torch.arange(grid_size, dtype=torch.float32) + 0.5) / grid_size
            ys, xs = torch.meshgrid(centres, centres, indexing="ij")
            self.register_buffer("patch_centres", torch.stack([xs, ys], -1).reshape(-1, 2), persistent=False)
        self.mask_head_kind = mask_head
        self.mask_head: nn.Module
        if mask_head == "official":
            self.mask_head = TokenMaskHead(d_fusion, grid_size, image_size)
        else:
            self.mask_head = MaskDecoder(d_fusion, image_size)
        for p in (self.reg_token, self.visual_pos, self.type_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(
        self, vision_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Fuses the two streams and predicts a box and a mask per sample.

        Args:
            vision_tokens: (B, P + h*w, vision_dim) with P = ``num_prefix_tokens``.
            text_tokens: (B, L, text_dim).
            text_mask: (B, L), True (or 1) for real tokens, False (0) for padding.

        Returns:
            ``box`` (B, 4) normalised (cx, cy, w, h) in [0, 1]; ``mask_logits`` (B, S, S).
        """
        check_grounding_inputs(vision_tokens, text_tokens, text_mask, self.num_prefix_tokens, self.grid_size)
        n_grid = self.grid_size * self.grid_size
        B = vision_tokens.shape[0]
        visual = self.vision_proj(vision_tokens[:, self.num_prefix_tokens :])  # (B, h*w, d)
        visual = visual + self.visual_sincos + self.visual_pos + self.type_embed[1]
        reg = (self.reg_token + self.type_embed[0]).expand(B, -1, -1)  # (B, 1, d)
        if self.text_proj is None:  # fusion_layers=0: [REG; visual], normalised, the text unused
            x = self.fusion(torch.cat([reg, visual], dim=1))  # (B, 1 + h*w, d)
        else:
            text = self.text_proj(text_tokens) + self.type_embed[2]  # (B, L, d)
            x = torch.cat([reg, visual, text], dim=1)  # (B, 1 + h*w + L, d)
            pad = torch.cat([text_mask.new_zeros(B, 1 + n_grid, dtype=torch.bool), ~text_mask.bool()], dim=1)
            x = self.fusion(x, src_key_padding_mask=pad)  # (B, 1 + h*w + L, d)
        box = self._box(x[:, 0], x[:, 1 : 1 + n_grid])  # (B, 4)
        grid = x[:, 1 : 1 + n_grid].transpose(1, 2).reshape(B, -1, self.grid_size, self.grid_size)  # (B, d, h, w)
        return {"box": box, "mask_logits": self.mask_head(grid)}

    def _box(self, reg: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """(B, d) fused [REG], (B, h*w, d) fused visual tokens -> (B, 4) normalised cx, cy, w, h."""
        if self.box_head_kind == "mlp":
            return self.box_head(reg).sigmoid()
        logits = torch.einsum("bd,bnd->bn", self.box_query(reg), self.box_key(visual)) / math.sqrt(reg.shape[-1])
        weights = logits.softmax(dim=-1)  # (B, h*w)
        centre = weights @ self.patch_centres.to(weights.dtype)  # (B, 2) soft-argmax, inside [0, 1]
        attended = torch.einsum("bn,bnd->bd", weights, visual)  # (B, d)
        size = self.box_head(torch.cat([reg, attended], dim=-1)).sigmoid()  # (B, 2)
        return torch.cat([centre, size], dim=-1)
