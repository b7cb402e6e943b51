"""Time dilation for the scale model: link rates and latencies scaled so that an emulated
device's compute-to-communication ratio equals a hardware profile's (the idea of DieCast,
Gupta et al., NSDI 2008, applied to training).

A budgeted CPU device (recpar.cluster.cpu_budget) computes at F_dev FLOP/s, the profile's
device at F_prof = peak × efficiency. The emulation runs D = F_dev / F_prof times as fast as
the real cluster (D ≪ 1), so every link is made D times as fast too:

    rate_emulated    = rate_profile × D
    latency_emulated = latency_profile / D

A step that takes t on the profile's cluster then takes t / D here, with compute,
communication, bubbles and imbalance in the profile's proportions; `profile_seconds(t)` maps a
measured time back (× D). Speedups and communication shares need no mapping: they are ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

from recpar.perfmodel.hardware import HardwareProfile

MIN_RATE_BIT_PER_S = 10_000.0
"""Below this a shaped link is dominated by the shaper's own granularity (one 1500-byte packet
takes 1.2 s); such a dilation needs a faster device budget."""


@dataclass(frozen=True)
class ScaledLink:
    """One class of link (intra-node or inter-node) on the profile and scaled."""

    profile_rate_bit_per_s: float
    profile_latency_s: float
    rate_bit_per_s: float
    latency_s: float

    def to_record(self) -> dict:
        return {"profile_rate_bit_per_s": self.profile_rate_bit_per_s,
                "profile_latency_s": self.profile_latency_s,
                "rate_bit_per_s": self.rate_bit_per_s, "latency_s": self.latency_s}


@dataclass(frozen=True)
class ScaleModel:
    """A hardware profile scaled to a measured budgeted device."""

    profile: str
    """Profile name, e.g. paper-a100."""
    device_flops_per_s: float
    """Sustained FLOP/s of one budgeted emulated device (measured)."""
    profile_flops_per_s: float
    """The profile's sustained FLOP/s per device (peak × efficiency)."""
    intra_node: ScaledLink
    inter_node: ScaledLink

    @property
    def dilation(self) -> float:
        """D = device / profile FLOP/s: how much faster the real cluster runs (1 / D)."""
        return self.device_flops_per_s / self.profile_flops_per_s

    def profile_seconds(self, emulated_s: float) -> float:
        """A time measured on the scale model, in the profile's seconds."""
        return emulated_s * self.dilation

    def to_record(self) -> dict:
        return {"profile": self.profile, "device_flops_per_s": self.device_flops_per_s,
                "profile_flops_per_s": self.profile_flops_per_s, "dilation": self.dilation,
                "intra_node": self.intra_node.to_record(),
                "inter_node": self.inter_node.to_record()}


def _scaled(rate_bytes_per_s: float, latency_s: float, d: float, what: str) -> ScaledLink:
    rate_bit_per_s = 8.0 * rate_bytes_per_s
    link = ScaledLink(rate_bit_per_s, latency_s, rate_bit_per_s * d, latency_s / d)
    if link.rate_bit_per_s < MIN_RATE_BIT_PER_S:
        raise ValueError(f"scale model: the {what} link scales to {link.rate_bit_per_s:.0f} "
                         f"bit/s ({rate_bit_per_s:.3g} bit/s × D = {d:.3g}), below "
                         f"{MIN_RATE_BIT_PER_S:.0f} bit/s; give each device a larger CPU budget")
    return link


def scale_model(profile: HardwareProfile, device_flops_per_s: float) -> ScaleModel:
    """Scale `profile`'s links to a device measured at `device_flops_per_s`."""
    if not device_flops_per_s > 0:
        raise ValueError(f"scale model: device_flops_per_s = {device_flops_per_s} must be > 0")
    f_prof = profile.sustained_flops_per_s
    d = device_flops_per_s / f_prof
    if d >= 1:
        raise ValueError(f"scale model: the emulated device ({device_flops_per_s:.3g} FLOP/s) "
                         f"is not slower than {profile.name}'s ({f_prof:.3g} FLOP/s); there is "
                         f"nothing to dilate")
    return ScaleModel(
        profile=profile.name, device_flops_per_s=device_flops_per_s, profile_flops_per_s=f_prof,
        intra_node=_scaled(profile.intra_node.bandwidth_bytes_per_s.value,
                           profile.intra_node.latency_s.value, d, "intra-node"),
        inter_node=_scaled(profile.inter_node.bandwidth_bytes_per_s.value,
                           profile.inter_node.latency_s.value, d, "inter-node"))
