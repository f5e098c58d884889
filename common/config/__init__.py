"""What a run asks for: one dataclass per concept (``concepts``), one config per stage (``stages``), the modes as
``Literal`` types (``modes``), the presets (``presets``) and the command line (``parse``)."""
