"""Independent numpy references used by the tests (no code from pconv_deploy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def partial_conv_bruteforce(x, mask, weight, bias, stride, padding):
    """The paper's formula evaluated window by window.

    x: [N, C, H, W]; mask: [N, C, H, W] binary (one value per feature element);
    weight: [O, C, kh, kw]; bias: [O] or None. Returns (out [N,O,H',W'], new_mask [N,1,H',W']).
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    mp = np.pad(mask, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), dtype=np.float64)
    new_mask = np.zeros((n, 1, ho, wo), dtype=np.float64)
    sum1 = c * kh * kw
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                xs = xp[b, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                ms = mp[b, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
                summ = ms.sum()
                if summ > 0:
                    for oc in range(o):
                        val = (weight[oc] * xs * ms).sum() * sum1 / summ
                        out[b, oc, i, j] = val + (bias[oc] if bias is not None else 0.0)
                    new_mask[b, 0, i, j] = 1.0
    return out, new_mask


def random_binary_mask(rng, shape, hole_ratio):
    return (rng.random(shape) >= hole_ratio).astype(np.float64)


def sha256_of(path) -> str:
    """Independent of pconv_deploy's own hashing helper."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- The three PConv code bases whose checkpoints `pconv import-checkpoint` reads -------------------
# Written from each project's published source (xiefan-guo/PConv src/generator.py; naoto0804/
# pytorch-inpainting-with-partial-conv net.py; open-mmlab/mmagic mmagic/models/editors/pconv/*), with
# their parameter and buffer names, so that their state_dict() is laid out exactly as theirs. Channel
# widths are scaled (``widths``) to keep the tests fast; the per-layer structure is theirs.


def project_widths(levels: int, scale: float) -> list[int]:
    """Encoder widths 64, 128, 256, 512, ... scaled, as in all three projects."""
    return [max(1, round(c * scale)) for c in (64, 128, 256, 512, 512, 512, 512, 512)[:levels]]


def nvidia_partial_conv(x, mask, weight, bias, stride, padding, eps=1e-8):
    """NVIDIA's PartialConv2d(multi_channel=True) as in xiefan-guo's src/generator.py and mmagic."""
    import torch
    import torch.nn.functional as F

    c_out, c_in, kh, kw = weight.shape
    updater = torch.ones(c_out, c_in, kh, kw, dtype=x.dtype)
    update_mask = F.conv2d(mask, updater, None, stride, padding)
    mask_ratio = (c_in * kh * kw) / (update_mask + eps)
    update_mask = torch.clamp(update_mask, 0, 1)
    mask_ratio = mask_ratio * update_mask
    raw_out = F.conv2d(x * mask, weight, bias, stride, padding)
    if bias is None:
        return raw_out * mask_ratio, update_mask
    b = bias.view(1, -1, 1, 1)
    return ((raw_out - b) * mask_ratio + b) * update_mask, update_mask


def naoto_partial_conv(x, mask, weight, bias, mask_weight, stride, padding):
    """naoto0804's PartialConv: (conv(X*M) - b) / sum(M) + b, zeroed where sum(M) == 0."""
    import torch
    import torch.nn.functional as F

    output = F.conv2d(x * mask, weight, bias, stride, padding)
    output_bias = bias.view(1, -1, 1, 1).expand_as(output) if bias is not None else torch.zeros_like(output)
    output_mask = F.conv2d(mask, mask_weight, None, stride, padding)
    holes = output_mask == 0
    mask_sum = output_mask.masked_fill(holes, 1.0)
    out = ((output - output_bias) / mask_sum + output_bias).masked_fill(holes, 0.0)
    return out, torch.ones_like(out).masked_fill(holes, 0.0)


def _block(conv_bias: bool, c_in: int, c_out: int, k: int, bn: bool, mask_param: str | None):
    """A conv (+ optional all-ones mask kernel) + optional BatchNorm, with the projects' names."""
    from torch import nn

    block = nn.Module()
    if mask_param == "naoto":
        block.conv = nn.Module()
        block.conv.input_conv = nn.Conv2d(c_in, c_out, k, bias=conv_bias)
        block.conv.mask_conv = nn.Conv2d(c_in, c_out, k, bias=False)
        nn.init.constant_(block.conv.mask_conv.weight, 1.0)
        block.conv.mask_conv.weight.requires_grad = False
        nn.init.kaiming_normal_(block.conv.input_conv.weight, a=0, mode="fan_in")  # naoto0804's init
    else:
        block.conv = nn.Conv2d(c_in, c_out, k, bias=conv_bias)
        nn.init.kaiming_normal_(block.conv.weight, a=0, mode="fan_in")
        if mask_param == "mmagic":  # a persistent buffer in mmagic's PartialConv2d
            import torch

            block.conv.register_buffer("weight_mask_updater", torch.ones(c_out, c_in, k, k))
    if conv_bias:
        import torch

        with torch.no_grad():
            (block.conv.input_conv if mask_param == "naoto" else block.conv).bias.uniform_(-0.5, 0.5)
    if bn:
        block.bn = nn.BatchNorm2d(c_out)
    return block


def make_project_unet(project: str, levels: int, scale: float):
    """xiefan-guo PUNet / naoto0804 PConvUNet / mmagic PConvEncoderDecoder, at reduced widths."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    enc = project_widths(levels, scale)
    names = {
        "xiefan-guo": ("ec_images_{}", "dc_images_{}", None),
        "naoto0804": ("enc_{}", "dec_{}", "naoto"),
        "mmagic": ("enc{}", "dec{}", "mmagic"),
    }[project]
    enc_name, dec_name, mask_param = names
    kernels = (7, 5, 5, 3, 3, 3, 3, 3)
    net = nn.Module()
    encoder = nn.Module() if project == "mmagic" else net
    decoder = nn.Module() if project == "mmagic" else net
    if project == "mmagic":
        net.encoder, net.decoder = encoder, decoder
    # first-level bias: mmagic's ConvModule has bias='auto' (bias where there is no norm); the others none
    in_ch = 3
    for i in range(levels):
        bias = project == "mmagic" and i == 0
        setattr(encoder, enc_name.format(i + 1), _block(bias, in_ch, enc[i], kernels[i], i > 0, mask_param))
        in_ch = enc[i]
    skips = [3, *enc[:-1]]
    for i in range(levels, 0, -1):  # dec_i joins dec_{i+1} (or the deepest encoder output) with enc_{i-1}
        up = enc[-1] if i == levels else enc[i - 1]
        out = 3 if i == 1 else enc[i - 2]
        setattr(decoder, dec_name.format(i), _block(i == 1, up + skips[i - 1], out, 3, i > 1, mask_param))

    def run(block, x, m, stride, padding, act):
        if mask_param == "naoto":
            c = block.conv.input_conv
            x, m = naoto_partial_conv(x, m, c.weight, c.bias, block.conv.mask_conv.weight, stride, padding)
        else:
            x, m = nvidia_partial_conv(x, m, block.conv.weight, block.conv.bias, stride, padding)
        if hasattr(block, "bn"):
            x = block.bn(x)
        return (act(x) if act is not None else x), m

    def forward(image, mask3):
        feats, masks = [image], [mask3]
        for i in range(levels):
            k = kernels[i]
            h, m = run(getattr(encoder, enc_name.format(i + 1)), feats[-1], masks[-1], 2, k // 2, F.relu)
            feats.append(h)
            masks.append(m)
        h, m = feats[-1], masks[-1]
        for i in range(levels, 0, -1):
            h = torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), feats[i - 1]], dim=1)
            m = torch.cat([F.interpolate(m, scale_factor=2, mode="nearest"), masks[i - 1]], dim=1)
            act = None if i == 1 else (lambda t: F.leaky_relu(t, 0.2))
            h, m = run(getattr(decoder, dec_name.format(i)), h, m, 1, 1, act)
        return torch.tanh(h) if project == "xiefan-guo" else h

    net.project_forward = forward
    return net


def project_inpaint(project: str, net, image, mask):
    """The project's own pipeline around its network, from [0, 1] RGB and a 1 = known mask to [0, 1] RGB.

    xiefan-guo feeds [0, 1] images and takes tanh's output as the image; naoto0804 normalises with
    ImageNet mean/std and un-normalises the output; mmagic feeds (x*255 - 127.5) / 127.5 and maps
    the output back with *127.5 + 127.5 (then /255). All repeat the mask to 3 channels.
    """
    import torch

    mask3 = mask.expand(-1, 3, -1, -1)
    if project == "naoto0804":
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=image.dtype).view(1, 3, 1, 1)
        return net.project_forward((image - mean) / std * mask3, mask3) * std + mean
    if project == "mmagic":
        x = (image * 255 - 127.5) / 127.5
        return (net.project_forward(x * mask3, mask3) * 127.5 + 127.5) / 255
    return net.project_forward(image * mask3, mask3)


# --- Checkpoints as each project's own training writes them ---------------------------------------

SCALE = 0.125  # 8, 16, 32, 64, 64, ... channels


CASES = {
    "xiefan-guo": (7, 384, 256),
    "naoto0804": (8, 512, 256),
    "mmagic": (7, 128, 384),
}


def train_like_the_project(project: str, net, levels: int):
    """BatchNorm statistics from training-mode passes, and Adam steps (the optimizer state to save).

    At the smallest size the levels allow, with batch 2 (enough for BatchNorm at the 1x1 bottleneck).
    """
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: running stats are those of the passes below
    gen = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=2e-4)
    size = 2**levels
    net.train()
    for _ in range(2):
        image = torch.rand(2, 3, size, 2 * size, generator=gen)
        mask = (torch.rand(2, 1, size // 8, size // 4, generator=gen) > 0.3).float()
        mask = mask.repeat_interleave(8, 2).repeat_interleave(8, 3)
        optimizer.zero_grad()
        project_inpaint(project, net, image, mask).abs().mean().backward()
        optimizer.step()
    return net.eval(), optimizer


def save_as_the_project(project: str, net, optimizer, path: Path) -> Path:
    """torch.save with each project's own dictionary layout."""
    state = net.state_dict()
    if project == "xiefan-guo":  # train.py: {'n_iter': epoch + 1, 'generator': generator.state_dict()}
        torch.save({"n_iter": 501, "generator": state}, path)
    elif project == "naoto0804":  # util/io.py save_ckpt: n_iter, then 'model', then 'optimizer'
        torch.save({"n_iter": 1_000_000, "model": state, "optimizer": optimizer.state_dict()}, path)
    else:  # mmengine Runner.save_checkpoint: meta, state_dict of PConvInpaintor (generator + loss), message_hub,
        full = {f"generator.{k}": v for k, v in state.items()}
        full["loss_percep.vgg.vgg_layers.0.weight"] = torch.randn(64, 3, 3, 3)  # the VGG of its perceptual loss
        full["loss_percep.vgg.vgg_layers.0.bias"] = torch.randn(64)
        meta = {"mmengine_version": "0.10.4", "time": "20240101_000000", "epoch": 0, "iter": 500000, "seed": 42}
        meta |= {"cfg": "model = dict(type='PConvInpaintor')", "experiment_name": "pconv_stage2_4xb2_places-256x256"}
        hub = mmengine_message_hub()  # and the optimizer (OptimWrapper.state_dict() is the optimizer's)
        torch.save({"meta": meta, "state_dict": full, "message_hub": hub, "optimizer": optimizer.state_dict()}, path)
    return path


def mmengine_message_hub() -> dict:
    """What mmengine's Runner.save_checkpoint puts under 'message_hub': MessageHub.state_dict(), whose
    log scalars are mmengine.logging.history_buffer.HistoryBuffer objects holding numpy arrays. Pickled
    from a stand-in class under that module name; mmengine itself is not installed (nor needed to load)."""
    import sys
    import types

    name = "mmengine.logging.history_buffer"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)

        class HistoryBuffer:
            def __init__(self, values) -> None:
                self.max_length = 1000000
                self._log_history = np.asarray(values, dtype=np.float64)
                self._count_history = np.ones(len(values), dtype=np.int64)

        HistoryBuffer.__module__, HistoryBuffer.__qualname__ = name, "HistoryBuffer"
        module.HistoryBuffer = HistoryBuffer
        for parent in ("mmengine", "mmengine.logging"):
            sys.modules.setdefault(parent, types.ModuleType(parent))
        sys.modules[name] = module
    scalars = {"train/lr": module.HistoryBuffer([5e-5, 5e-5]), "train/loss": module.HistoryBuffer([0.9, 0.8])}
    runtime = {"iter": 500000, "max_iters": 500000, "epoch": 0, "last_ckpt": "/work_dirs/iter_500000.pth"}
    return {"log_scalars": scalars, "runtime_info": runtime, "resumed_keys": {"iter": False}}
