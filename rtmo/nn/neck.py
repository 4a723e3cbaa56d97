"""HybridEncoder neck (RT-DETR style): a transformer encoder on the stride-32 map, then a CSP FPN/PAN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RTMOConfig
from .layers import NECK_NORM, ConvModule, SinePositionalEncoding, upsample2


class RepVGGBlock(nn.Module):
    """SiLU(BN(conv3x3(x)) + BN(conv1x1(x))), the training form stored in checkpoints."""

    def __init__(self, c: int):
        super().__init__()
        self.branch_3x3 = ConvModule(c, c, 3, act=None, **NECK_NORM)
        self.branch_1x1 = ConvModule(c, c, 1, act=None, **NECK_NORM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch_1x1 is None:  # fused for deployment
            return self.act(self.branch_3x3(x))
        return self.act(self.branch_3x3(x) + self.branch_1x1(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """One 3x3 conv with bias = BN(conv3x3) + BN(conv1x1); call after their BNs were folded."""
        if self.branch_1x1 is None:
            return
        for branch in (self.branch_3x3, self.branch_1x1):
            if not isinstance(branch.bn, nn.Identity):
                raise RuntimeError("fold the branch BatchNorms first (RTMO.fuse does)")
        conv3, conv1 = self.branch_3x3.conv, self.branch_1x1.conv
        conv3.weight += F.pad(conv1.weight, [1, 1, 1, 1])
        conv3.bias += conv1.bias
        self.branch_1x1 = None


class CSPRepLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_blocks: int, widen_factor: float):
        super().__init__()
        hidden = int(c_out * widen_factor)
        self.conv1 = ConvModule(c_in, hidden, 1, act="silu", **NECK_NORM)
        self.conv2 = ConvModule(c_in, hidden, 1, act="silu", **NECK_NORM)
        self.bottlenecks = nn.Sequential(*[RepVGGBlock(hidden) for _ in range(num_blocks)])
        # RTMO-l has hidden == c_out and therefore no conv3 in its checkpoints.
        self.conv3 = (ConvModule(hidden, c_out, 1, act="silu", **NECK_NORM) if hidden != c_out
                      else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class MultiheadAttention(nn.Module):
    """Wrapper with mmcv's attribute name `attn`; positions go to query and key only."""

    def __init__(self, embed_dims: int, num_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # q and k are distinct tensors and need_weights stays True: this keeps PyTorch on the same
        # (non-fused) attention path as mmpose, which matters for bit-level parity.
        q = (x + pos).transpose(0, 1)
        k = (x + pos).transpose(0, 1)
        out = self.attn(query=q, key=k, value=x.transpose(0, 1))[0]
        return x + out.transpose(0, 1)


class FFN(nn.Module):
    def __init__(self, embed_dims: int, feedforward_channels: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(dropout)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class TransformerEncoderLayer(nn.Module):
    """Post-norm DETR encoder layer."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = FFN(embed_dims, feedforward_channels, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims), nn.LayerNorm(embed_dims)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norms[0](self.self_attn(x, pos))
        return self.norms[1](self.ffn(x))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList([TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return x


class ChannelMapper(nn.Module):
    """1x1 conv + BN (no activation) per output level."""

    def __init__(self, c_in: int, c_out: int, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList([ConvModule(c_in, c_out, 1, act=None, **NECK_NORM)
                                    for _ in range(num_levels)])

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(conv(f) for conv, f in zip(self.convs, feats))


class HybridEncoder(nn.Module):
    """Inputs: backbone maps at strides 8/16/32. Outputs: projected PAN maps at strides 16 and 32."""

    output_indices = (1, 2)

    def __init__(self, in_channels: tuple[int, ...], cfg: RTMOConfig):
        super().__init__()
        hidden = cfg.hidden_dim
        num_blocks = round(3 * cfg.deepen_factor)
        self.hidden_dim = hidden
        self.input_proj = nn.ModuleList(
            [ConvModule(c, hidden, 1, act=None, **NECK_NORM) for c in in_channels])
        self.encoder = nn.ModuleList([TransformerEncoder(
            cfg.transformer_encoder_layers, embed_dims=cfg.transformer_embed_dims,
            num_heads=cfg.transformer_num_heads, feedforward_channels=cfg.transformer_feedforward_channels,
            dropout=cfg.transformer_dropout)])
        self.sincos_pos_enc = SinePositionalEncoding(hidden // 2, cfg.pe_temperature)
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList(
            [ConvModule(hidden, hidden, 1, act="silu", **NECK_NORM) for _ in range(n - 1)])
        self.fpn_blocks = nn.ModuleList(
            [CSPRepLayer(2 * hidden, hidden, num_blocks, cfg.widen_factor) for _ in range(n - 1)])
        self.downsample_convs = nn.ModuleList(
            [ConvModule(hidden, hidden, 3, stride=2, act="silu", **NECK_NORM) for _ in range(n - 1)])
        self.pan_blocks = nn.ModuleList(
            [CSPRepLayer(2 * hidden, hidden, num_blocks, cfg.widen_factor) for _ in range(n - 1)])
        self.projector = ChannelMapper(hidden, cfg.neck_out_channels, len(self.output_indices))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]

        # Transformer encoder on the coarsest level only.
        b, c, h, w = proj[-1].shape
        tokens = proj[-1].flatten(2).permute(0, 2, 1).contiguous()  # layout changes matmul bits
        tokens = self.encoder[0](tokens, self.sincos_pos_enc.encode_2d(h, w))
        proj[-1] = tokens.permute(0, 2, 1).contiguous().view(b, c, h, w)

        # Top-down FPN; the lateral outputs replace the coarse maps and feed the PAN.
        inner = [proj[-1]]
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            lateral = self.lateral_convs[i](inner[0])
            inner[0] = lateral
            inner.insert(0, self.fpn_blocks[i](torch.cat([upsample2(lateral), proj[idx - 1]], dim=1)))

        # Bottom-up PAN.
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], dim=1)))

        return self.projector([outs[i] for i in self.output_indices])
