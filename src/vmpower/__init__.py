"""vmpower: build Kepler power models for virtual machines from paired VM-feature / host-power runs."""

__version__ = "0.1.0"
