"""Sharing architectures. Each maps a batch to one prediction per task and describes its parameters.

`mtlrun.architecture.base.MTLModel` states the contract every architecture keeps. Each architecture is
documented in the module docstring of the module that holds the class its config's `_target_` names
(conf/architecture/): what it shares, its maths, its config keys, the roles of its parameters and where it
departs from its paper. Options that only set a key of another (`omoe`, `cgc`) are documented with it.
"""
