"""The adapters' up-projection ``out + z B^T`` (per output slice) as one autograd function with a hand-chosen
backward: the training hot path of every low-rank layer (LoRA, CoLA, MokA and the intra variants).

Why not plain ``torch.addmm(out, z, B.t())`` (docs/benchmarks/batch_profile.md):

- **The weight gradient.** Autograd computes the gradient of ``B.t()`` (a transposed view) as ``g^T z``,
  a (d_out x N) @ (N x k) product, to match B's strides. With k <= 8 (LoRA at rank 8) MKL runs that shape 6-10x
  slower than the same product as ``(z^T g)^T``: 162 ms instead of 19 ms for an fc1 (d_out 3072) at batch 4 of
  DINOv2-B/14 @ 448 on one core. That alone made LoRA (rank 8, k = 8) slower than CoLA (k = 2r = 16) at batch 4.
  Here the weight gradient is always ``z^T g``, B is used through a contiguous (k, d_out) copy (a few KB), and the
  input gradient is ``g (B^T)^T`` with the contiguous operand.
- **The copy.** An out-of-place add copies the whole (N, d_out) base output; an in-place add through autograd on a
  view makes the backward copy the gradient several times (``CopySlices``). The function adds in place into the
  base layer's fresh output (marked dirty: the frozen linear's backward never reads its output) and passes the
  output gradient through unchanged.

The arithmetic is that of ``out + z_s B_s^T`` per slice; the gradients equal autograd's up to the summation order
of the GEMMs (float rounding; tested against autograd in float64).
"""

from __future__ import annotations

import torch


def _writable_base(out: torch.Tensor) -> torch.Tensor | None:
    """The tensor to add into in place: ``out`` itself, or the product it views (``F.linear`` with a bias on
    (B, N, d) input returns a view of a fresh (B N, d) tensor); ``None`` when neither is safe (then the function
    copies)."""
    t = out._base if out._is_view() else out
    if t is None or t._is_view() or t.numel() != out.numel() or not t.is_contiguous():
        return None
    if t.is_leaf and t.requires_grad:
        return None
    if t.data_ptr() != out.data_ptr() or not out.is_contiguous():
        return None
    return t


def slice_major(b: torch.Tensor, splits: int) -> torch.Tensor:
    """B (d, k) as the contiguous (k, d) (one slice) or (S, k, d / S) operand the GEMMs read."""
    d, k = b.shape
    if splits == 1:
        return b.t().contiguous()
    return b.reshape(splits, d // splits, k).transpose(1, 2).contiguous()


def accumulate_up_(flat: torch.Tensor, z: torch.Tensor, bt: torch.Tensor, splits: int) -> torch.Tensor:
    """``flat += per-slice z_s B_s^T`` in place: flat (n, d), z (n, S k), bt from :func:`slice_major`. Each slice's
    GEMM accumulates into its column block of ``flat`` (BLAS takes the row stride: no temporary, no add pass)."""
    if splits == 1:
        return flat.addmm_(z, bt)
    k, w = bt.shape[1], bt.shape[2]
    for i in range(splits):
        flat[:, i * w : (i + 1) * w].addmm_(z[:, i * k : (i + 1) * k], bt[i])
    return flat


class UpProject(torch.autograd.Function):
    """``y = out + per-slice z_s B_s^T`` with the layouts above. Shapes: out (..., d) contiguous, z (n, S k) with
    n = out.numel() / d, b (d, k), all one dtype; returns ``out``'s shape (``out`` itself when ``inplace``)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, z: torch.Tensor, b: torch.Tensor, splits: int, inplace: bool):  # noqa: D102
        d = b.shape[0]
        n = out.numel() // d
        if inplace:
            ctx.mark_dirty(out)
            y = out
        else:
            y = out.contiguous() if not out.is_contiguous() else out.clone()
        bt = slice_major(b, splits)
        accumulate_up_(y.view(n, d), z, bt, splits)
        ctx.save_for_backward(z, bt)
        ctx.splits = splits
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: D102
        z, bt = ctx.saved_tensors
        s = ctx.splits
        shape = g.shape
        d = shape[-1]
        g = g.contiguous().view(-1, d)
        grad_z = grad_b = None
        if s == 1:
            if ctx.needs_input_grad[1]:
                grad_z = g @ bt.t()  # (n, k)
            if ctx.needs_input_grad[2]:
                grad_b = (z.t() @ g).t()  # (d, k): z^T g, never g^T z
        else:  # per slice, on column blocks of g and z (strided operands go to BLAS as they are)
            k, w = bt.shape[1], bt.shape[2]
            blocks = [(g[:, i * w : (i + 1) * w], z[:, i * k : (i + 1) * k]) for i in range(s)]
            if ctx.needs_input_grad[1]:
                grad_z = torch.cat([gi @ bt[i].t() for i, (gi, _) in enumerate(blocks)], dim=1)  # (n, S k)
            if ctx.needs_input_grad[2]:
                grad_bt = torch.stack([zi.t() @ gi for gi, zi in blocks])  # (S, k, d / S): z^T g per slice
                grad_b = grad_bt.transpose(1, 2).reshape(d, k)
        return g.view(shape), grad_z, grad_b, None, None


def up_project(out: torch.Tensor, z: torch.Tensor, b: torch.Tensor, splits: int) -> torch.Tensor:
    """``out + per-slice z B^T`` for training (see the module docstring); same shape as ``out``.

    Args:
        out: the base layer's output (..., d_out), fresh (only the caller holds it).
        z: (..., S k) the S slices' low-rank activations, in ``out``'s dtype.
        b: (d_out, k) the S row blocks of the slices' B, in ``out``'s dtype.
        splits: S.
    """
    n = out.numel() // out.shape[-1]
    # Under torch.compile the pointer checks cannot be traced and buy nothing (the compiler plans its own buffers):
    # the function runs out of place and is traced, backward included, into the graph.
    base = None if torch.compiler.is_compiling() else _writable_base(out)
    inplace = base is not None
    y = UpProject.apply(base if inplace else out, z.reshape(n, -1), b, splits, inplace)
    return y.view(out.shape)
