"""The Swin architecture keys that the pretraining and fine-tuning ``model`` sections share.

Both schemas subclass :class:`SwinArch`; a subclass may redeclare ``arch`` (fine-tuning adds the
ResNets) and keeps the key order of this class.
"""

from __future__ import annotations

from dataclasses import dataclass

from solider.config import ConfigError, opt


@dataclass
class SwinArch:
    arch: str = opt("swin_tiny", "swin_tiny | swin_small | swin_base | custom (then embed_dim, depths, "
                                 "num_heads, window_size are used)")
    embed_dim: int = opt(96, "custom arch only: channels of stage 0", gt=0)
    depths: tuple[int, ...] = opt((2, 2, 6, 2), "custom arch only: blocks per stage")
    num_heads: tuple[int, ...] = opt((3, 6, 12, 24), "custom arch only: attention heads per stage")
    window_size: int = opt(7, "custom arch only: attention window (official: 7)", gt=0)

    def arch_spec(self) -> str | dict:
        """What ``build_swin`` takes: a variant name or the custom dims."""
        if self.arch != "custom":
            return self.arch
        return {"embed_dim": self.embed_dim, "depths": tuple(self.depths),
                "num_heads": tuple(self.num_heads), "window_size": self.window_size}

    @classmethod
    def known_archs(cls) -> tuple[str, ...]:
        return ("swin_tiny", "swin_small", "swin_base", "custom")

    def validate(self) -> None:
        if self.arch not in self.known_archs():
            raise ConfigError(f"model.arch={self.arch!r}: expected one of {', '.join(self.known_archs())}")
        if self.arch == "custom" and len(self.depths) != len(self.num_heads):
            raise ConfigError(f"model.depths {self.depths} and model.num_heads {self.num_heads} "
                              "must have the same length")
