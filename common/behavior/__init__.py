"""Behavioral validation (METHOD §10): the pipeline and its clamp, the stimuli and their designs, the 2×2 statistics
(by word, by prompt, the crossed mixed model, the bootstrap over words and prompts, power), feature screens, the
logit test, and the debugging tools of part13b, 13c and 13d."""
