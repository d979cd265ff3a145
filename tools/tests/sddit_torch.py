"""A PyTorch SD-DiT built from ordinary nn.Modules named as in DiT / MaskDiT / DINO, and one
training step (SPEC sections 2-5): the user's model in the recorder and loader tests and in
the README's quickstart test. Written from SPEC (after the functional peer in shared/peer),
not imported from it."""

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_1d(dim, pos):
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    a = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([a.sin(), a.cos()], dim=1)


def sincos_2d(dim, grid):
    t = torch.arange(grid * grid)
    return torch.cat([sincos_1d(dim // 2, t % grid), sincos_1d(dim // 2, t // grid)], dim=1)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, C, D, p):
        super().__init__()
        self.proj = nn.Conv2d(C, D, p, p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))

    def forward(self, t):
        f = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=t.dtype) / 128)
        a = t.reshape(-1, 1) * f.reshape(1, -1)
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=1))


class LabelEmbedder(nn.Module):
    def __init__(self, n, D):
        super().__init__()
        self.embedding_table = nn.Embedding(n + 1, D)

    def forward(self, labels):
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, W, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(W, 3 * W), nn.Linear(W, W)

    def forward(self, x):
        N, L, W = x.shape
        q, k, v = self.qkv(x).reshape(N, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, L, W))


class Mlp(nn.Module):
    def __init__(self, W, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(W, hidden), nn.Linear(hidden, W)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, W, D, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.attn, self.mlp = Attention(W, heads), Mlp(W, int(W * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * W))

    def forward(self, x, c):
        m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + m[2].unsqueeze(1) * self.attn(modulate(self.norm1(x), m[0], m[1]))
        return x + m[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), m[3], m[4]))


class FinalLayer(nn.Module):
    def __init__(self, W, D, out):
        super().__init__()
        self.norm_final = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(W, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * W))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DINOHead(nn.Module):
    def __init__(self, D, hidden, bottleneck, out):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1)
        self.last_layer.parametrizations.weight.original0.requires_grad = False   # norm_last_layer

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2, eps=1e-12))


class SDDiT(nn.Module):
    """The network F: encoder over the visible tokens with a CLS token, MaskDiT-style decoder
    over all positions, DINO head."""

    def __init__(self, cfg):
        super().__init__()
        D, C, p = cfg["hidden_size"], cfg["in_channels"], cfg["patch_size"]
        Dd, self.grid = cfg["decoder_hidden_size"], cfg["input_size"] // p
        self.cfg, T = cfg, self.grid ** 2
        self.x_embedder = PatchEmbed(C, D, p)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg["num_classes"], D)
        pe = torch.cat([torch.zeros(1, D, dtype=torch.float64), sincos_2d(D, self.grid)])
        self.pos_embed = nn.Parameter(pe.unsqueeze(0).float(), requires_grad=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.blocks = nn.ModuleList(DiTBlock(D, D, cfg["num_heads"], cfg["mlp_ratio"]) for _ in range(cfg["depth"]))
        self.decoder_layer = FinalLayer(D, D, Dd)
        self.decoder_pos_embed = nn.Parameter(sincos_2d(Dd, self.grid).unsqueeze(0).float(), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(DiTBlock(Dd, D, cfg["decoder_num_heads"], cfg["mlp_ratio"])
                                            for _ in range(cfg["decoder_depth"]))
        self.final_layer = FinalLayer(Dd, D, p * p * C)
        self.head = DINOHead(D, cfg["head_hidden_dim"], cfg["head_bottleneck_dim"], cfg["head_out_dim"])

    def encode(self, x, c_noise, y, ids_keep=None):
        N, D = x.shape[0], self.pos_embed.shape[2]
        tokens = self.x_embedder(x) + self.pos_embed[:, 1:]
        c = self.t_embedder(c_noise) + self.y_embedder(y)
        h = tokens if ids_keep is None else torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        h = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(N, -1, -1), h], dim=1)
        for b in self.blocks:
            h = b(h, c)
        return tokens, c, h

    def forward(self, x, c_noise, y, ids_keep=None):
        """(F [N,C,H,W], encoder output [N,1+V,D])."""
        tokens, c, h = self.encode(x, c_noise, y, ids_keep)
        e = h[:, 1:]
        H = e if ids_keep is None else tokens.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, e.shape[2]), e)
        z = self.decoder_layer(H, c) + self.decoder_pos_embed
        for b in self.decoder_blocks:
            z = b(z, c)
        out, p, C, g = self.final_layer(z, c), self.cfg["patch_size"], self.cfg["in_channels"], self.grid
        Fx = out.reshape(-1, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, g * p, g * p)
        return Fx, h


def edm(sigma, sd):
    s = sigma.reshape(-1, 1, 1, 1)
    return sd ** 2 / (s ** 2 + sd ** 2), s * sd / (s ** 2 + sd ** 2).sqrt(), 1 / (sd ** 2 + s ** 2).sqrt(), s.log() / 4


class EDMPrecond(nn.Module):
    """D(x; sigma, y) = c_skip x + c_out F(c_in x; c_noise, y); the network is `.model`."""

    def __init__(self, cfg):
        super().__init__()
        self.sigma_data, self.model = cfg["sigma_data"], SDDiT(cfg)

    def forward(self, x, sigma, y, ids_keep=None):
        c_skip, c_out, c_in, c_noise = edm(sigma, self.sigma_data)
        Fx, h = self.model(c_in * x, c_noise.flatten(), y, ids_keep)
        return c_skip * x + c_out * Fx, h


def dino_loss(t, s, center, tau_t, tau_s):
    q = F.softmax((t - center) / tau_t, dim=-1)
    return -(q * F.log_softmax(s / tau_s, dim=-1)).sum(-1).mean()


def make(cfg, seed=0, lr=1e-3):
    """(student, teacher, optimizer): the teacher an EMA copy of the whole student."""
    torch.manual_seed(seed)
    student = EDMPrecond(cfg)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr,
                            betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return student, teacher, opt


def inputs(cfg, N=2, mask_ratio=0.25, seed=1):
    """x0, labels, sigma, noise_s, noise_t, mask, center_cls, center_patch (float32)."""
    g = torch.Generator().manual_seed(seed)
    C, H, K = cfg["in_channels"], cfg["input_size"], cfg["head_out_dim"]
    T = (H // cfg["patch_size"]) ** 2
    V = int(T * (1 - mask_ratio))
    mask = torch.ones(N, T, dtype=torch.int64)
    mask.scatter_(1, torch.argsort(torch.rand(N, T, generator=g), dim=1)[:, :V], 0)
    sigma = (torch.randn(N, generator=g) * cfg["p_std"] + cfg["p_mean"]).exp()
    return (torch.randn(N, C, H, H, generator=g), torch.randint(0, cfg["num_classes"], (N,), generator=g),
            sigma, torch.randn(N, C, H, H, generator=g), torch.randn(N, C, H, H, generator=g), mask,
            torch.randn(K, generator=g) * 0.1, torch.randn(K, generator=g) * 0.1)


def train_step(student, teacher, opt, cfg, x0, labels, sigma, noise_s, noise_t, mask, center_cls, center_patch):
    """One SD-DiT step (SPEC 4-5): losses, backward, AdamW, EMA, centers. Returns (losses,
    (new center_cls, new center_patch))."""
    N, K, sd = x0.shape[0], cfg["head_out_dim"], cfg["sigma_data"]
    ids_keep = torch.nonzero(mask == 0)[:, 1].reshape(N, -1)
    s = sigma.reshape(-1, 1, 1, 1)
    D, enc = student(x0 + noise_s * s, sigma, labels, ids_keep)
    L_G = ((s ** 2 + sd ** 2) / (s * sd) ** 2 * (D - x0) ** 2).mean()
    s_cls, s_patch = student.model.head(enc[:, 0]), student.model.head(enc[:, 1:])
    with torch.no_grad():
        sig_t = torch.full_like(sigma, cfg["sigma_min"])
        _, _, c_in, c_noise = edm(sig_t, sd)
        _, _, tenc = teacher.model.encode(c_in * (x0 + sig_t.reshape(-1, 1, 1, 1) * noise_t), c_noise.flatten(), labels)
        tv = torch.gather(tenc[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, tenc.shape[2]))
        t_cls, t_patch = teacher.model.head(tenc[:, 0]), teacher.model.head(tv)
        m = cfg["center_momentum"]
        centers = (center_cls * m + t_cls.mean(0) * (1 - m), center_patch * m + t_patch.reshape(-1, K).mean(0) * (1 - m))
    L_cls = dino_loss(t_cls, s_cls, center_cls, cfg["tau_t"], cfg["tau_s"])
    L_patch = dino_loss(t_patch.reshape(-1, K), s_patch.reshape(-1, K), center_patch, cfg["tau_t"], cfg["tau_s"])
    total = L_G + L_cls + L_patch
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    with torch.no_grad():
        for t, p in zip(teacher.parameters(), student.parameters()):
            t.mul_(cfg["ema_beta"]).add_((1 - cfg["ema_beta"]) * p.detach())
    return {"generative": L_G, "dis_cls": L_cls, "dis_patch": L_patch, "total": total}, centers
