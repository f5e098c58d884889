"""Where the arithmetic runs: device, precision and decode regimes, fp16 emulation, torchrun's world, resources."""
