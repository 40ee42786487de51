"""The model: typed checkpoint configs, the SigLIP tower, the NitroGen network and its sampler,
the released checkpoint format, presets for training from scratch, and the shipped agent's card."""
