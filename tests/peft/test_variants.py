"""cola.peft intra variants (peft.intra: dora, rslora, pissa): equality with HF peft, fused = split per slice, merge,
save/load onto the original weights, the intra metadata of adapter files, MokA's refusal, parameter matching."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cola.peft import (
    CoLAConfig,
    CoLALinear,
    LoRAConfig,
    LoRALinear,
    MoKAConfig,
    MoKALinear,
    adapter_params_per_layer,
    adapter_state_dict,
    inject_adapters,
    load_adapters,
    mark_only_adapters_trainable,
    match_lora,
    original_weights,
    param_matched_lora_rank,
    save_adapters,
)
from cola.peft.methods import ParamMatchedConfig
from cola.peft.state import INTRA_KEY
from tests.conftest import perturb

D_IN, D_OUT, D_C, R = 24, 18, 32, 4
VARIANTS = ["dora", "rslora", "pissa"]


def _base(d_in=D_IN, d_out=D_OUT, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


# ----------------------------------------------------------------------------------------------- HF peft
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return self.proj(x)


HF_OPTIONS = {"dora": dict(use_dora=True), "rslora": dict(use_rslora=True), "pissa": dict(init_lora_weights="pissa")}


def _hf_pair(intra: str, dropout: float = 0.0):
    """HF peft's LoRA variant and ours on the same weights, A/B (and DoRA's magnitude) moved off their init."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ref, ours = _Net(), _Net()
    ours.load_state_dict(ref.state_dict())
    opts = HF_OPTIONS[intra]
    hf = peft.get_peft_model(
        ref, peft.LoraConfig(r=R, lora_alpha=16, target_modules=["proj"], lora_dropout=dropout, **opts)
    )
    layer = inject_adapters(ours, LoRAConfig(rank=R, alpha=16, dropout=dropout, intra=intra), ["proj"]).modules["proj"]
    mark_only_adapters_trainable(ours)
    hl = hf.base_model.model.proj
    pairs = [(hl.lora_A["default"].weight, layer.lora_A), (hl.lora_B["default"].weight, layer.lora_B)]
    if intra == "dora":
        pairs.append((hl.lora_magnitude_vector["default"].weight, layer.lora_magnitude))
    with torch.no_grad():  # A is random in both (another RNG stream); PiSSA's A, B come from W0
        for theirs, mine in pairs[: 2 if intra != "pissa" else 0]:
            mine.copy_(theirs)
    # the init is HF's: the same magnitude (||W0|| per row), PiSSA factors and residual
    for theirs, mine in pairs:
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.base_layer.weight, hl.base_layer.weight, rtol=0, atol=1e-6)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for theirs, mine in pairs:
            step = 0.3 * torch.randn(mine.shape, generator=g)
            theirs.add_(step)
            mine.add_(step)
    return hf, ours, pairs


@pytest.mark.parametrize("intra", VARIANTS)
def test_equals_hf_peft_forward_and_gradients(intra):
    hf, ours, pairs = _hf_pair(intra)
    x = torch.randn(3, 4, D_IN)
    y_ours, y_hf = ours(x), hf(x)
    torch.testing.assert_close(y_ours, y_hf, rtol=1e-5, atol=1e-5)
    y_ours.square().sum().backward()
    y_hf.square().sum().backward()
    for theirs, mine in pairs:  # A, B (and magnitude): HF detaches DoRA's norm too
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_dora_equals_hf_peft_under_dropout():
    """Training with dropout: the magnitude sees the dropped input, W0 x + b + (g - 1) W0 drop(x) + g s B A drop(x)."""
    hf, ours, pairs = _hf_pair("dora", dropout=0.3)
    hf.train()
    ours.train()
    x = torch.randn(3, 4, D_IN)
    torch.manual_seed(7)
    y_hf = hf(x)
    torch.manual_seed(7)  # one dropout draw per forward in both
    y_ours = ours(x)
    torch.testing.assert_close(y_ours, y_hf, rtol=1e-5, atol=1e-5)
    y_ours.square().sum().backward()
    y_hf.square().sum().backward()
    for theirs, mine in pairs:
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_rslora_and_lambda_scales():
    assert LoRAConfig(rank=16, alpha=8, intra="rslora").scaling == 8 / 4
    cola = CoLAConfig(rank=16, alpha=8, intra="rslora")
    assert cola.scaling == 2.0 and cola.lambda_value == 0.5  # lambda stays alpha / rank (only the intra path moves)
    layer = CoLALinear(_base(), CoLAConfig(rank=R, alpha=8, intra="rslora", reduction=4), context_dim=D_C)
    assert layer.scaling == 4.0 and layer.cola_lambda.item() == 2.0
    assert MoKALinear(_base(), MoKAConfig(rank=R, alpha=8, intra="rslora"), context_dim=D_C).scaling == 4.0


# ----------------------------------------------------------------------------------------------- DoRA, PiSSA maths
def test_dora_formula_and_init():
    layer = LoRALinear(_base(), LoRAConfig(rank=R, alpha=8, intra="dora"))
    w0 = layer.base_layer.weight.detach().clone()
    torch.testing.assert_close(layer.lora_magnitude, torch.linalg.norm(w0, dim=1), rtol=0, atol=0)
    perturb(layer)
    x = torch.randn(2, 5, D_IN)
    direction = w0 + layer.scaling * layer.lora_B @ layer.lora_A
    w = layer.lora_magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer(x), x @ w.t() + layer.base_layer.bias, rtol=1e-5, atol=1e-5)  # bias unscaled
    torch.testing.assert_close(layer.merged_weight(), w, rtol=1e-5, atol=1e-5)


def test_pissa_factors_are_the_top_singular_triplets():
    layer = LoRALinear(_base(), LoRAConfig(rank=R, alpha=8, intra="pissa"))
    w0 = _base().weight
    u, s, vh = torch.linalg.svd(w0)
    top = u[:, :R] @ torch.diag(s[:R]) @ vh[:R]
    torch.testing.assert_close(layer.scaling * layer.lora_B @ layer.lora_A, top, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight, w0 - top, rtol=0, atol=1e-5)  # the residual
    # A and B carry sqrt(S / s) each (HF peft's split)
    torch.testing.assert_close(layer.lora_A.norm(dim=1), torch.sqrt(s[:R] / layer.scaling), rtol=1e-5, atol=0)
    assert torch.equal(layer.lora_pissa_A0, layer.lora_A) and torch.equal(layer.lora_pissa_B0, layer.lora_B)
    assert {n for n, _ in layer.named_buffers()} == {"lora_pissa_A0", "lora_pissa_B0"}


@pytest.mark.parametrize("intra", ["dora", "pissa"])
@pytest.mark.parametrize("cls", ["lora", "cola"])
def test_fused_equals_split_per_slice(intra, cls):
    """Slice k of a fused layer is the variant on rows k of W0 (PiSSA: the SVD of that row block; DoRA: those rows'
    magnitudes and norms). The split layers get the fused slice's tensors through load_state_dict, which for PiSSA
    re-bases their own residual onto the fused layer's initial factors."""
    o = D_OUT // 3

    def build(base, splits):
        if cls == "lora":
            return LoRALinear(base, LoRAConfig(rank=R, alpha=8, intra=intra), out_splits=splits)
        return CoLALinear(base, CoLAConfig(rank=R, intra=intra, reduction=4), context_dim=D_C, out_splits=splits)

    fused = build(_base(), 3)
    perturb(fused)
    x, c = torch.randn(2, 5, D_IN), torch.randn(2, D_C)
    if cls == "cola":
        fused.set_condition(c)
    state = fused.state_dict()
    outs = []
    for k in range(3):
        lin = nn.Linear(D_IN, o)
        with torch.no_grad():
            lin.weight.copy_(_base().weight[k * o : (k + 1) * o])  # the original rows, not the fused residual
            lin.bias.copy_(_base().bias[k * o : (k + 1) * o])
        part = build(lin, 1)
        rows = {n: t[k * o : (k + 1) * o] for n, t in state.items() if n.endswith(("_B", "_B0", "magnitude"))}
        rows |= {n: t[k * R : (k + 1) * R] for n, t in state.items() if n.endswith(("_A", "_A0"))}
        if cls == "cola":
            rows |= {"cola_lambda": state["cola_lambda"][k : k + 1]}
            rows |= {
                n.replace(f"cola_hypernet.{k}.", "cola_hypernet."): t for n, t in state.items() if f"net.{k}." in n
            }
        missing = part.load_state_dict(rows, strict=False).missing_keys
        assert missing == ["base_layer.weight", "base_layer.bias"]
        if cls == "cola":
            part.set_condition(c)
        outs.append(part(x))
    torch.testing.assert_close(fused(x), torch.cat(outs, dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("intra", VARIANTS)
def test_merge_unmerge_exact_and_original_weight(intra):
    base = _base(d_out=18)
    w0 = base.weight.detach().clone()
    layer = CoLALinear(base, CoLAConfig(rank=R, reduction=4, intra=intra), context_dim=D_C, out_splits=3)
    layer.set_condition(torch.randn(2, D_C))
    perturb(layer)
    x = torch.randn(2, 5, D_IN)
    ref, w_res, merged = layer(x), layer.base_layer.weight.detach().clone(), layer.merged_weight()
    layer.merge()
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight, merged, rtol=0, atol=0)
    torch.testing.assert_close(original_weights(nn.Sequential(layer))["0"], w0, rtol=0, atol=1e-5)
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w_res, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.original_weight(), w0, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- save / load
class TinyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return x + self.fc(torch.softmax(q @ k.transpose(1, 2), -1) @ v)


TARGETS = ["qkv", "fc"]


def _model(config, seed: int = 0) -> nn.Sequential:
    """Two blocks, built from the same seed each time: the original pretrained weights, then adapters injected."""
    torch.manual_seed(seed)
    model = nn.Sequential(TinyBlock(), TinyBlock())
    report = inject_adapters(model, config, TARGETS, context_dim=8, out_splits={"qkv": 3})
    mark_only_adapters_trainable(model)
    model.condition = torch.randn(2, 8)
    for m in report.modules.values():
        if isinstance(m, CoLALinear):
            m.set_condition(model.condition)
    return model


@pytest.mark.parametrize("method", ["lora", "cola"])
@pytest.mark.parametrize("intra", VARIANTS)
def test_save_load_round_trip_onto_the_original_weights(tmp_path, method, intra):
    cfg = LoRAConfig(rank=2, intra=intra) if method == "lora" else CoLAConfig(rank=2, reduction=2, intra=intra)
    src = _model(cfg)
    perturb(src, seed=3)
    x = torch.randn(2, 5, 16)
    path = save_adapters(tmp_path / "adapter.safetensors", src, config={"method": method, **cfg.to_dict()})
    dst = _model(cfg)  # the original weights again, injected: its own PiSSA SVD and residual
    if intra == "pissa":
        # as if dst's SVD had come out otherwise (another machine / BLAS): other initial factors, their residual
        for layer in (dst[0].qkv, dst[1].fc):
            with torch.no_grad():
                w0 = layer.original_weight()
                layer.lora_pissa_A0.add_(0.1)
                layer.lora_pissa_B0.mul_(1.5)
                layer.base_layer.weight.copy_(
                    w0 - layer.scaling * layer._delta_weight(layer.lora_pissa_A0, layer.lora_pissa_B0)
                )
    load_adapters(path, dst, config={"method": method, **cfg.to_dict()})
    torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-5)
    for name, w in original_weights(dst).items():  # still the pretrained W0 under the loaded factors
        torch.testing.assert_close(w, original_weights(_model(LoRAConfig(rank=2)))[name], rtol=0, atol=1e-5)
    state = adapter_state_dict(src)
    assert ("0.qkv.lora_pissa_A0" in state) == (intra == "pissa") and ("0.qkv.lora_magnitude" in state) == (
        intra == "dora"
    )
    assert not any("base_layer" in k for k in state)


def test_intra_metadata_mismatch_names_both(tmp_path):
    src = _model(LoRAConfig(rank=2, alpha=4, intra="rslora"))
    path = save_adapters(tmp_path / "a.safetensors", src)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()[INTRA_KEY]) == {"intra": ["rslora"], "scaling": [4 / math.sqrt(2)]}
    with pytest.raises(
        ValueError,
        match=r"saved with peft.intra='rslora' \(intra scale 2.82.*model uses peft.intra='lora' \(intra scale 2.0\)",
    ):
        load_adapters(path, _model(LoRAConfig(rank=2, alpha=4)))
    with pytest.raises(ValueError, match=r"peft.intra='dora'"):
        load_adapters(path, _model(LoRAConfig(rank=2, alpha=4, intra="dora")))
    # same intra, another scale (alpha): named too
    with pytest.raises(ValueError, match=r"intra scale 2.82.*intra scale 1.41"):
        load_adapters(path, _model(LoRAConfig(rank=2, alpha=2, intra="rslora")))
    # the peft config check fills intra for configs written before it existed
    with pytest.raises(ValueError, match=r"intra: saved 'lora' != current 'rslora'"):
        from cola.peft import load_adapter_state_dict

        load_adapter_state_dict(
            src, adapter_state_dict(src), saved_config={"rank": 2}, current_config={"rank": 2, "intra": "rslora"}
        )


def test_files_without_the_intra_key_load_as_lora(tmp_path):
    from safetensors.torch import save_file

    src = _model(LoRAConfig(rank=2))
    perturb(src[0].fc)
    old = tmp_path / "old.safetensors"  # a file written before the key existed
    save_file({k: v.contiguous() for k, v in adapter_state_dict(src).items()}, str(old), metadata={})
    dst = _model(LoRAConfig(rank=2))
    load_adapters(old, dst, config={"method": "lora", "rank": 2, "intra": "lora"})
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"saved with peft.intra='lora' \(intra scale not recorded\)"):
        load_adapters(old, _model(LoRAConfig(rank=2, intra="rslora")))


# ----------------------------------------------------------------------------------------------- configs
def test_moka_refuses_dora_and_pissa():
    for intra in ("dora", "pissa"):
        with pytest.raises(ValueError, match=rf"peft.intra='{intra}' does not apply to MokA.*B is shared by its self"):
            MoKAConfig(intra=intra)
    with pytest.raises(
        ValueError, match=r"intra must be one of \['adalora', 'dora', 'lora', 'pissa', 'rslora'\], got 'vera'"
    ):
        LoRAConfig(intra="vera")
    with pytest.raises(ValueError, match=r"peft.intra='pissa' cannot be combined with peft.sharing='shared_b'"):
        CoLAConfig(intra="pissa", sharing="shared_b")


def test_dora_counts_its_magnitudes():
    for cfg in (LoRAConfig(rank=4), CoLAConfig(rank=4, reduction=4)):
        kw = dict(in_features=D_IN, out_features=3 * D_OUT, context_dim=D_C, out_splits=3)
        plain = adapter_params_per_layer(cfg, **kw)
        for intra, extra in (("dora", 3 * D_OUT), ("rslora", 0), ("pissa", 0)):  # PiSSA's A0, B0 are buffers
            assert adapter_params_per_layer(type(cfg)(**{**cfg.to_dict(), "intra": intra}), **kw) == plain + extra


@pytest.mark.parametrize("intra", VARIANTS)
def test_param_matched_lora_uses_the_same_intra_and_scale(intra):
    cola = ParamMatchedConfig(rank=8, alpha=4, reduction=16, intra=intra)
    shapes = [(768, 2304, 3), (768, 768, 1), (768, 3072, 1), (3072, 768, 1)] * 12
    matched = match_lora(cola, [(cola, i, o, 768, s) for i, o, s in shapes])
    lora = matched.config
    assert lora.intra == intra and lora.scaling == pytest.approx(cola.scaling, rel=1e-12)

    def at(r):
        cfg = LoRAConfig(rank=r, intra=intra)
        return sum(adapter_params_per_layer(cfg, in_features=i, out_features=o, out_splits=s) for i, o, s in shapes)

    assert at(lora.rank) == matched.params_lora
    for other in (lora.rank - 1, lora.rank + 1):
        assert abs(matched.params_lora - matched.params_cola) <= abs(at(other) - matched.params_cola)
    assert param_matched_lora_rank(matched.params_cola, shapes, intra=intra) == (lora.rank, matched.params_lora)


def test_pissa_svd_runs_in_float32_per_slice():
    """The SVD sees float32 even for a bf16 base (PiSSA's accuracy), and each slice of a fused layer alone."""
    base = _base(d_out=18).to(torch.bfloat16)
    layer = LoRALinear(base, LoRAConfig(rank=R, intra="pissa"), out_splits=3)
    assert layer.lora_A.dtype == torch.bfloat16 and layer.lora_pissa_A0.shape == (3 * R, D_IN)
    for k in range(3):  # slice k's factors span slice k's top singular space only
        w_k = _base(d_out=18).weight[k * 6 : (k + 1) * 6]
        top = torch.linalg.svdvals(w_k)[:R]
        got = torch.linalg.svdvals(
            layer.scaling * layer.lora_B[k * 6 : (k + 1) * 6].float() @ layer.lora_A[k * R : (k + 1) * R].float()
        )[:R]
        torch.testing.assert_close(got, top, rtol=2e-2, atol=0)  # bf16 storage of A, B: ~3 significant digits


# ----------------------------------------------------------------------------------------------- through a task
def _task(intra: str, method: str = "cola"):
    """A grounding task with the tiny test towers, built as train.py builds it (towers from the seed, then adapters)."""
    from types import SimpleNamespace

    from cola.harness import build_encoder, build_module
    from tests.conftest import compose_cfg

    small = [
        "task.head.width=32",
        "task.head.ff=64",
        "task.head.layers=1",
        "task.head.heads=2",
    ]
    cfg = compose_cfg([f"peft={method}", f"peft.intra={intra}", *small])
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    return build_module(cfg, encoder, SimpleNamespace(val_split="val", test_splits=["testA"])).eval()


def _outputs(task, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in task(batch).values() if isinstance(t, torch.Tensor)]


def test_pissa_checkpoint_and_adapter_file_load_onto_rebuilt_towers(tmp_path):
    """Checkpoints never hold the frozen towers: rebuilding the original towers, injecting PiSSA (its own SVD) and
    loading the training checkpoint or adapter.safetensors gives the trained model back."""
    from tests.conftest import hand_batch

    src = _task("pissa")
    perturb(src.encoder, seed=4)
    batch = hand_batch()
    expected = _outputs(src, batch)
    ckpt = {"state_dict": src.state_dict()}
    src.on_save_checkpoint(ckpt)
    kept = set(ckpt["state_dict"])
    assert any(k.endswith("lora_pissa_A0") for k in kept) and not any("base_layer" in k for k in kept)
    dst = _task("pissa")
    dst.on_load_checkpoint(ckpt)
    dst.load_state_dict(ckpt["state_dict"], strict=False)
    for got, want in zip(_outputs(dst, batch), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    path = save_adapters(tmp_path / "adapter.safetensors", src, extra_prefixes=src.head_prefixes())
    dst = _task("pissa")
    load_adapters(path, dst, extra_prefixes=dst.head_prefixes())
    for got, want in zip(_outputs(dst, batch), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_checkpoints_without_intra_are_lora():
    task = _task("lora", method="lora")
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    ckpt["cola_peft_config"].pop("intra")  # written before peft.intra existed
    task.check_checkpoint_fits(dict(ckpt), exact=True)
    with pytest.raises(ValueError, match=r"intra: checkpoint 'lora' != run 'dora'"):
        _task("dora", method="lora").check_checkpoint_fits(dict(ckpt))
