"""Dynamic Coordinate Classifier: keypoint features, GAU, dynamic bins and sine bin encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RTMOConfig
from .layers import SinePositionalEncoding


class ScaleNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class ChannelWiseScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Scale(nn.Module):
    """A learnable scalar factor (0-dim parameter, as in the checkpoints)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GAU(nn.Module):
    """Gated attention unit over the K keypoint tokens of each instance (relu² kernel, no softmax)."""

    def __init__(self, dims: int, expansion_factor: int = 2, s: int = 128, dropout_rate: float = 0.0):
        super().__init__()
        self.s = s
        self.e = int(dims * expansion_factor)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.o = nn.Linear(self.e, dims, bias=False)
        self.ln = ScaleNorm(dims)
        self.res_scale = ChannelWiseScale(dims)
        self.act_fn = nn.SiLU(inplace=True)
        self.sqrt_s = math.sqrt(s)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        nn.init.xavier_uniform_(self.uv.weight)

    def forward(self, x: torch.Tensor, pos_enc: torch.Tensor) -> torch.Tensor:
        uv = self.act_fn(self.uv(self.ln(x)))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=-1)
        base = base.unsqueeze(-2) * self.gamma + self.beta
        q, k = torch.unbind(base, dim=-2)
        q, k = q + pos_enc, k + pos_enc
        kernel = torch.square(F.relu(torch.matmul(q, k.transpose(-1, -2)) / self.sqrt_s))
        y = self.o(u * torch.matmul(self.dropout(kernel), v))
        return self.res_scale(x) + y


class DCC(nn.Module):
    """Turns a pose vector + its (expanded) box into K keypoints by 1-D classification over bins."""

    def __init__(self, cfg: RTMOConfig):
        super().__init__()
        k, c = cfg.num_keypoints, cfg.feat_channels_dcc
        self.num_keypoints, self.feat_channels = k, c
        self.spe = SinePositionalEncoding(cfg.spe_channels, cfg.spe_temperature)
        self.gau = GAU(c, cfg.gau_expansion_factor, cfg.gau_s, cfg.gau_dropout_rate)
        self.pos_enc = nn.Parameter(torch.randn(k, cfg.gau_s))
        self.pose_to_kpts = nn.Sequential(nn.Linear(cfg.pose_vec_channels, c * k), nn.BatchNorm1d(c * k))
        self.x_fc = nn.Linear(cfg.spe_channels, c)
        self.y_fc = nn.Linear(cfg.spe_channels, c)
        self.sigma_fc = nn.Sequential(nn.Linear(cfg.pose_vec_channels, k), nn.Sigmoid(), Scale(0.1))
        self.register_buffer("y_bins", torch.linspace(-0.5, 0.5, cfg.num_bins[1]))
        self.register_buffer("x_bins", torch.linspace(-0.5, 0.5, cfg.num_bins[0]))
        # False: mmpose's arithmetic, bit for bit. True (RTMO.set_precision's fast and reduced paths): the
        # same heatmaps at float rounding for a fraction of the work and memory per detection (reassociated
        # bin products without the (n, bins, S) encodings, one fused softmax).
        self.fast = False

    def _bins(self, bbox_cs: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin positions `bins * scale + (centre - offset)`: (n, Bx), (n, By)."""
        center, scale = bbox_cs.split(2, dim=-1)
        center = center - offset
        return (self.x_bins * scale[..., 0:1] + center[..., 0:1],
                self.y_bins * scale[..., 1:2] + center[..., 1:2])

    def heatmaps(self, pose_vecs: torch.Tensor, bbox_cs: torch.Tensor, grids: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax-normalised 1-D heatmaps (n, K, Bx), (n, K, By)."""
        # Encoding uses positions relative to the grid cell; decoding uses absolute ones.
        x_pos, y_pos = self._bins(bbox_cs, grids)
        feats = self.pose_to_kpts(pose_vecs)
        feats = feats.reshape(*feats.shape[:-1], self.num_keypoints, self.feat_channels)
        feats = self.gau(feats, self.pos_enc)
        if self.fast:
            # softmax_1d's clamp (+-5e4) and eps (1e-8 on a sum >= 1) change nothing beyond rounding here
            return (torch.softmax(_bin_logits(feats, self.x_fc, self.spe, x_pos), dim=-1),
                    torch.softmax(_bin_logits(feats, self.y_fc, self.spe, y_pos), dim=-1))
        x_enc = self.x_fc(self.spe.encode_1d(x_pos))
        y_enc = self.y_fc(self.spe.encode_1d(y_pos))
        x_hms = torch.matmul(feats, x_enc.transpose(-1, -2).contiguous())
        y_hms = torch.matmul(feats, y_enc.transpose(-1, -2).contiguous())
        return softmax_1d(x_hms), softmax_1d(y_hms)

    def decode(self, x_hms: torch.Tensor, y_hms: torch.Tensor, bbox_cs: torch.Tensor) -> torch.Tensor:
        """Expectation over absolute bin positions -> (n, K, 2) in network-input pixels."""
        x_bins, y_bins = self._bins(bbox_cs, torch.zeros_like(bbox_cs[..., :2]))
        x = (x_hms * x_bins.unsqueeze(1)).sum(dim=-1)
        y = (y_hms * y_bins.unsqueeze(1)).sum(dim=-1)
        return torch.stack((x, y), dim=-1)

    def forward(self, pose_vecs: torch.Tensor, bbox_cs: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        x_hms, y_hms = self.heatmaps(pose_vecs, bbox_cs, grids)
        return self.decode(x_hms, y_hms, bbox_cs)

    def forward_train(self, pose_vecs: torch.Tensor, bbox_cs: torch.Tensor, grids: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Keypoints, heatmaps and the learned sigmas (used only by the MLE loss)."""
        sigmas = self.sigma_fc(pose_vecs)
        x_hms, y_hms = self.heatmaps(pose_vecs, bbox_cs, grids)
        return self.decode(x_hms, y_hms, bbox_cs), (x_hms, y_hms), sigmas


def _bin_logits(feats: torch.Tensor, fc: nn.Linear, spe: SinePositionalEncoding, pos: torch.Tensor
                ) -> torch.Tensor:
    """`feats @ fc(spe.encode_1d(pos))^T`, reassociated as `(feats @ W) @ enc^T + feats @ b`: the weight then
    multiplies K keypoint features instead of every bin (RTMO-s: 17 vs 448 rows through 128 x 128), and
    the encoding's [cos | sin] halves enter as two products (no concatenated copy).
    feats (n, K, C), pos (n, bins) -> (n, K, bins)."""
    freq = (pos.unsqueeze(-1) / spe.dim_t).transpose(-1, -2)  # (n, S/2, bins)
    w_cos, w_sin = torch.matmul(feats, fc.weight).chunk(2, dim=-1)  # (n, K, S/2) each
    offset = torch.matmul(feats, fc.bias).unsqueeze(-1)  # (n, K, 1)
    return torch.baddbmm(offset, w_cos, freq.cos()).baddbmm_(w_sin, freq.sin())


# exp(x) is exactly 0 in float32 below this (the smallest subnormal is exp(-103.28); measured: the last x
# with exp(x) > 0 is -103.972), and x in [EXP_ZERO_BELOW, EXP_FAST_ABOVE) gives subnormals.
EXP_ZERO_BELOW, EXP_FAST_ABOVE = -104.0, -87.0


def softmax_1d(logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Softmax over the last axis as the checkpoints were trained: clamp, detached max, `+eps`."""
    logits = logits.clamp(min=-5e4, max=5e4)
    z = logits - logits.max(dim=-1, keepdim=True).values.detach()
    e = _exp(z)
    return e / (e.sum(dim=-1, keepdim=True) + eps)


def _exp(z: torch.Tensor) -> torch.Tensor:
    """`z.exp()`, bit for bit, without its slow path. Sharp heatmaps put most bins far below the max, and
    the CPU exp kernel takes a ~100x slower path for every input below ~-87 (subnormal or zero results):
    that made the DCC's cost per detection several times what its arithmetic needs. So: exp of the inputs
    clamped into the fast range, exact zeros below EXP_ZERO_BELOW, and the true exp only for the few
    inputs in between, whose results are subnormal. (Autograd keeps the plain form: its backward needs
    exp's own output.)"""
    if z.requires_grad or z.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
        return z.exp()  # exported graphs (traced into ONNX) keep one plain Exp
    e = z.clamp(min=EXP_FAST_ABOVE).exp()
    slow = z < EXP_FAST_ABOVE
    e.masked_fill_(slow, 0.0)
    band = torch.nonzero((slow & (z >= EXP_ZERO_BELOW)).view(-1)).squeeze(1)
    if band.numel():
        e.view(-1).index_copy_(0, band, z.reshape(-1).index_select(0, band).exp())
    return e
