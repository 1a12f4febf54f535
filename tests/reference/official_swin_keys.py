"""Expected official SOLIDER Swin state-dict keys and shapes, generated from the documented layout.

Written from docs/reference/solider.md §4.2 (keys in module registration order), independently of
``solider.models.swin``; tests check it against the key lists dumped from the official module
(``solider_keys_*.txt``) when those files are available, and our model against it always.
"""

from __future__ import annotations

from pathlib import Path

RELEASED = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
KEY_LISTS = Path(__file__).resolve().parents[3] / "shared" / "docs" / "reference"


def official_backbone_keys(embed_dim: int, depths: tuple, heads: tuple, window: int = 7,
                           controller: bool = True) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the official backbone (without the ``backbone.`` prefix), in order."""
    keys: dict[str, tuple[int, ...]] = {
        "patch_embed.projection.weight": (embed_dim, 3, 4, 4),
        "patch_embed.projection.bias": (embed_dim,),
        "patch_embed.norm.weight": (embed_dim,),
        "patch_embed.norm.bias": (embed_dim,),
    }
    dims = [embed_dim * 2**s for s in range(len(depths))]
    for s, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{s}.blocks.{b}."
            keys.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.w_msa.relative_position_bias_table": ((2 * window - 1) ** 2, heads[s]),
                p + "attn.w_msa.relative_position_index": (window**2, window**2),
                p + "attn.w_msa.qkv.weight": (3 * c, c), p + "attn.w_msa.qkv.bias": (3 * c,),
                p + "attn.w_msa.proj.weight": (c, c), p + "attn.w_msa.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "ffn.layers.0.0.weight": (4 * c, c), p + "ffn.layers.0.0.bias": (4 * c,),
                p + "ffn.layers.1.weight": (c, 4 * c), p + "ffn.layers.1.bias": (c,),
            })
        if s < len(depths) - 1:
            keys.update({f"stages.{s}.downsample.norm.weight": (4 * c,),
                         f"stages.{s}.downsample.norm.bias": (4 * c,),
                         f"stages.{s}.downsample.reduction.weight": (2 * c, 4 * c)})
    for s, c in enumerate(dims):
        keys.update({f"norm{s}.weight": (c,), f"norm{s}.bias": (c,)})
    if controller:
        widths = [dims[min(s + 1, len(dims) - 1)] for s in range(len(dims))]
        for kind in ("w", "b"):
            for s, c in enumerate(widths):
                keys[f"semantic_embed_{kind}.{s}.weight"] = (c, 2)
                keys[f"semantic_embed_{kind}.{s}.bias"] = (c,)
    return keys


def read_key_list(arch: str) -> dict[str, tuple[int, ...]] | None:
    """The dumped official teacher keys (``backbone.``/``head.`` prefixed) of ``arch``, if present."""
    path = KEY_LISTS / f"solider_keys_{arch.removeprefix('swin_')}.txt"
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return out
