"""Encoders: the feature extractors that architectures are built from (injected, never hard-wired).

An encoder is an `nn.Module` built from `in_shape` (one example's input shape) that maps a batch of
inputs to a batch of features `[N, out_dim]` and exposes `in_shape` and `out_dim`. It is a sequence of
`stages` (an `nn.ModuleList`) with their output shapes in `stage_shapes`, so column and attention designs
can act between stages (`mtlrun.encoder.stages` holds their helpers). Architectures receive a factory
that builds a fresh encoder, so designs with one column per task (or several experts) can build several.
"""
