"""The training runner: setup steps, the training loop, evaluation, and the files a run writes."""
