"""CUDA checks of CoLA (``pytest -m gpu``; scripts/gpu_check.sh runs them): a tiny CoLA grounding model computes
the same forward and gradients on the GPU as on the CPU in float32, trains under bf16 autocast, gives the same
output merged as unmerged, and ``train.py`` runs a training step under DDP on one GPU.

Every test is marked ``gpu`` (deselected by the default ``-m 'not slow and not gpu'``) and skipped where torch sees
no CUDA device, so ``pytest -m gpu --collect-only`` lists them on any machine.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest
import torch
from omegaconf import OmegaConf

from cola.peft import adapter_layers, is_adapter_param, merge_adapters, unmerge_adapters
from tests.conftest import TASK_IMAGE, cli_args, hand_batch, make_task, train_py

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

BATCH = 2
# Tolerance of a float32 evaluation of the model against the exact (float64) one, as a normwise relative error
# max|x - x_ref| / max|x_ref|. One length-N reduction (dot product or sum) in float32 is within
# gamma_N = N u / (1 - N u) ~ N u of the exact value relative to the sum of its terms' magnitudes (Higham, Accuracy
# and Stability of Numerical Algorithms, 2nd ed., ch. 3), u = 2^-24 the float32 unit roundoff. The longest
# reduction of this model's forward and backward is over the B x S x S mask logits (the focal and dice losses'
# sums and the mask head's conv weight gradients): N = 2 * 56 * 56 = 6272, so TOL = N u ~ 3.7e-4. The worst-case
# bound of one reduction is used for the whole network: rounding errors of the ~20 chained reductions are far from
# worst case (they grow like sqrt(N) u). Measured on the CPU, float32 is within 1.1e-6 of float64 on the outputs
# and 7.2e-6 on the gradients (per adapter layer), 50x inside TOL. CUDA's float32 kernels (cuBLAS, cuDNN, SDPA) sum
# in other orders, not with fewer bits once TF32 is off, so both devices must meet the same TOL, and two float32
# runs then differ by at most 2 TOL. A wrong result (a lost condition, a missing path) is off by the adapters' share
# of the output: with B_L, B_C ~ 0.1 N(0, 1) the adapters move the box by 54 TOL and the mask logits by 137 TOL,
# the inter path alone by 46 and 133 TOL (the test requires > 20 TOL).
U32 = 2.0**-24
N_REDUCTION = BATCH * TASK_IMAGE * TASK_IMAGE
TOL = N_REDUCTION * U32


@pytest.fixture
def fp32_matmul() -> Iterator[None]:
    """True float32 GEMMs and convolutions on CUDA (no TF32, whose 10-bit mantissa would be ~1e-3 off); restored
    afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cola_task(seed: int = 1):
    """The tiny CoLA grounding task (ViT + BERT towers, CoLA adapters on every block linear) with non-zero B_L and
    B_C, so both adapter paths change the output; in eval mode (no dropout) unless trained."""
    task = make_task("cola")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in task.named_parameters():
            if n.endswith((".lora_B", ".cola_B")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return task.eval()


def _batch(device: str | torch.device, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in hand_batch(BATCH).items()}


def _forward_backward(task, device: str, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict]:
    """Outputs and loss of a copy of ``task`` on ``device`` in ``dtype``, and the gradients of its trainable
    parameters, all as float64 CPU tensors."""
    model = copy.deepcopy(task).to(device, dtype)
    batch = _batch(device, dtype)
    out = model(batch)
    loss, _ = model.compute_loss(out, batch)
    loss.backward()
    outputs = {**{k: v.detach() for k, v in out.items()}, "loss": loss.detach()}
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    return {k: v.double().cpu() for k, v in outputs.items()}, {n: g.double().cpu() for n, g in grads.items()}


def _normwise(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max|x - ref| / max|ref| (absolute error where ref is 0)."""
    scale = ref.abs().max().item()
    return (x - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def _grad_groups(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients flattened per adapter layer (all its A, B, lambda and hypernetwork parameters) and per other
    top-level module (the head). Per layer, not per tensor: under a tiny model's hypernetwork, whose first
    LayerNorm normalises 2 to 4 values, fc1's gradient nearly cancels (|g| ~ 1e-11 of the layer's), so its own
    relative error is noise; the layer's gradient as a whole is what an optimiser step moves."""
    groups: dict[str, list[torch.Tensor]] = {}
    for n, g in grads.items():
        if is_adapter_param(n):
            key = n[: min(n.find(f".{p}") for p in ("lora_", "cola_") if f".{p}" in n)]
        else:
            key = n.split(".")[0]
        groups.setdefault(key, []).append(g.flatten())
    return {k: torch.cat(v) for k, v in groups.items()}


def _errors(got: tuple[dict, dict], ref: tuple[dict, dict]) -> dict[str, float]:
    outputs, grads = got
    ref_outputs, ref_grads = ref
    errs = {k: _normwise(outputs[k], ref_outputs[k]) for k in ref_outputs}
    ref_groups = _grad_groups(ref_grads)
    errs.update({f"grad {k}": _normwise(v, ref_groups[k]) for k, v in _grad_groups(grads).items()})
    return errs


def test_cola_forward_and_backward_on_cuda_equal_cpu_fp32(fp32_matmul):
    task = _cola_task()
    ref = _forward_backward(task, "cpu", torch.float64)
    cpu = _forward_backward(task, "cpu", torch.float32)
    cuda = _forward_backward(task, "cuda", torch.float32)
    # the adapters matter: without both paths (B_L = B_C = 0) or without the inter path (B_C = 0) the outputs move
    # by far more than TOL
    for removed in ((".lora_B", ".cola_B"), (".cola_B",)):
        plain = copy.deepcopy(task)
        with torch.no_grad():
            for n, p in plain.named_parameters():
                if n.endswith(removed):
                    p.zero_()
        plain_out, _ = _forward_backward(plain, "cpu", torch.float64)
        for k in ("box", "mask_logits"):
            assert _normwise(plain_out[k], ref[0][k]) > 20 * TOL, (removed, k)
    assert len(_grad_groups(ref[1])) == sum(1 for _ in adapter_layers(task)) + 1  # every adapter layer + the head
    cpu_err, cuda_err = _errors(cpu, ref), _errors(cuda, ref)
    assert max(cpu_err.values()) <= TOL, {k: v for k, v in cpu_err.items() if v > TOL}
    assert max(cuda_err.values()) <= TOL, {k: v for k, v in cuda_err.items() if v > TOL}


def test_bf16_autocast_trains_exactly_the_trainable_parameters():
    torch.manual_seed(0)
    task = _cola_task().cuda().train()
    batch = _batch("cuda")
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_param(n) for n in trainable if n.startswith("encoder."))
    # no weight decay: a parameter moves only if a gradient reached it
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = task(batch)
            loss, _ = task.compute_loss(out, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    changed = {n for n, p in task.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable, {"frozen but changed": changed - trainable, "trainable unchanged": trainable - changed}
    # fp32 master weights: autocast casts copies, the parameters stay float32
    assert all(p.dtype == torch.float32 for n, p in task.named_parameters() if n in trainable)


def test_merged_eval_equals_unmerged_on_cuda(fp32_matmul):
    task = _cola_task().cuda().eval()
    batch = _batch("cuda")
    layers = [layer for _, layer in adapter_layers(task)]
    weights = [layer.base_layer.weight.detach().clone() for layer in layers]
    with torch.no_grad():
        ref = task(batch)
        assert merge_adapters(task) == len(layers) > 0
        assert all(layer.merged for layer in layers)
        merged = task(batch)
        assert unmerge_adapters(task) == len(layers)
        again = task(batch)
    # merged and unmerged are two float32 evaluations of one function, each within TOL of the exact value (the
    # merge adds a length-r reduction, r = 4, to W0's entries: within the same bound), so they differ by <= 2 TOL
    for k in ("box", "mask_logits"):
        assert _normwise(merged[k].double(), ref[k].double()) <= 2 * TOL, k
        assert _normwise(again[k].double(), ref[k].double()) <= 2 * TOL, k
    assert not any(layer.merged for layer in layers)
    for layer, w in zip(layers, weights):  # unmerge restores W0 to float32 rounding of W0 + s B A - s B A
        torch.testing.assert_close(layer.base_layer.weight, w, atol=1e-5, rtol=0)


def test_ddp_training_step_on_one_gpu(synthetic_refcoco, tmp_path):
    run = tmp_path / "run"
    # debug=fast sets trainer.strategy=auto after the trainer group is chosen, so trainer=ddp alone would run
    # without DDP: the strategy is named again
    overrides = ["trainer=ddp", "trainer.strategy=ddp", "trainer.devices=1", "trainer.accelerator=gpu"]
    overrides += ["trainer.max_steps=1", "trainer.limit_train_batches=1", f"paths.output_dir={tmp_path}"]
    res = train_py(*cli_args(synthetic_refcoco, run, *overrides))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["params/trainable"] > 0 and "val/acc@0.5" in metrics
    cfg = OmegaConf.load(run / "config.yaml")
    assert (cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.devices) == ("ddp", "gpu", 1)
