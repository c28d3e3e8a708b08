"""Loss-weighting and gradient-balancing methods behind one contract (see ``base.Weighting``)."""
