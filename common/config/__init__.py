"""What a run asks for: one dataclass per concept, one config per stage, the modes as Literal types, the presets, the
command line."""
