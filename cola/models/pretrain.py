"""Unimodal pretraining of the tiny DINOv2-shaped ViT used by ``model=tiny`` (the demo and CPU runs).

A random-init frozen tower gives an adapter nothing to adapt, so the tiny vision tower is first pretrained on
its own (no text, no grounding labels): images of random coloured shapes on textured backgrounds, with a
dense objective — every patch predicts the colour and the shape of the object under it (or background) —
which teaches it what real pretrained towers know about images: colour, shape, where things are. Its
weights ship with the repo as ``assets/tiny_vit.safetensors`` (float16) and are rebuilt by ``train.py`` when
missing (``model.assets`` in ``configs/model/tiny.yaml`` names :func:`pretrain_tiny_vit` as their builder).

    pretrain_tiny_vit(path, dtype="float16")                                           # from Python
    python scripts/pretrain_tiny_vit.py assets/tiny_vit.safetensors --dtype float16   # rebuilds the shipped file
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file

log = logging.getLogger(__name__)

# Arguments of timm.create_model; configs/model/tiny.yaml must build the same architecture.
TINY_VIT = dict(
    model_name="vit_small_patch14_dinov2", img_size=112, embed_dim=192, depth=6, num_heads=3, pretrained=False
)
COLOURS = {  # broad palette (the synthetic grounding set uses a subset)
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 30),
    "white": (235, 235, 235),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size): 1 + colour*|shapes| + shape, 0 = bg."""
    bg = rng.integers(60, 140, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    labels = Image.new("L", (size, size), 0)
    draw, ldraw = ImageDraw.Draw(img), ImageDraw.Draw(labels)
    names = list(COLOURS)
    for _ in range(rng.integers(1, 4)):
        side = int(rng.uniform(0.2, 0.6) * size)
        x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
        ci, si = int(rng.integers(len(names))), int(rng.integers(len(SHAPES)))
        colour = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in COLOURS[names[ci]])
        draw_shape(draw, SHAPES[si], (x0, y0, x0 + side, y0 + side), colour)
        draw_shape(ldraw, SHAPES[si], (x0, y0, x0 + side, y0 + side), 1 + ci * len(SHAPES) + si)
    if rng.random() < 0.3:  # letterbox-like padding, as the grounding inputs have
        pad = int(rng.uniform(0.1, 0.4) * size)
        arr, lab = np.array(img), np.array(labels)
        arr[size - pad :] = 0 if rng.random() < 0.5 else arr[size - pad :]
        lab[size - pad :] = 0
        return arr, lab
    return np.array(img), np.array(labels)


def make_batch(rng: np.random.Generator, n: int, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labs = zip(*(render(rng, size) for _ in range(n)))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    lab = torch.from_numpy(np.stack(labs)).long()
    # label of each patch = label at its centre pixel
    c = patch // 2
    return x, lab[:, c::patch, c::patch].reshape(n, -1)


def pretrain_tiny_vit(
    out: str | os.PathLike,
    *,
    steps: int = 150,
    batch: int = 32,
    seed: int = 0,
    lr: float = 1e-3,
    dtype: str = "float32",
) -> Path:
    """Pretrains the tiny ViT (:data:`TINY_VIT`) on per-patch colour + shape labels and saves its weights.

    Args:
        out: the ``.safetensors`` file to write (atomically; its folder is created).
        steps: optimiser steps (AdamW, 50-step warm-up then cosine decay).
        batch: images per step.
        seed: seeds the model init and the images.
        lr: peak learning rate.
        dtype: storage dtype, ``float32`` or ``float16`` (the shipped file: half the size, loaded as float32).

    Returns:
        The path written.
    """
    out = Path(out)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = timm.create_model(**TINY_VIT)
    size, patch = TINY_VIT["img_size"], model.patch_embed.patch_size[0]
    n_cls = 1 + len(COLOURS) * len(SHAPES)
    head = torch.nn.Linear(model.embed_dim, n_cls)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    t0 = time.time()
    for step in range(steps):
        x, y = make_batch(rng, batch, size, patch)
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]  # (B, N, C)
        loss = F.cross_entropy(head(tokens).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (head(tokens).argmax(-1) == y).float().mean().item()
            log.info("step %4d  loss %.3f  patch acc %.3f  (%.0fs)", step, loss.item(), acc, time.time() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()}
        meta = {"arch": str(TINY_VIT), "steps": str(steps), "seed": str(seed), "dtype": dtype}
        save_file(state, tmp, metadata=meta)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
