"""The bit-exact integer engine: the golden model of the hardware."""

from apsq.integer.psum import IntPSUM, psum_accumulate_int, shift_round_clamp

__all__ = ["IntPSUM", "integer_forward", "psum_accumulate_int", "shift_round_clamp", "tile_sums"]


def __getattr__(name: str):  # layer runners import apsq.nn; load them lazily to avoid a cycle
    if name in ("integer_forward", "tile_sums"):
        from apsq.integer import layer

        return getattr(layer, name)
    raise AttributeError(name)
