"""Sharing architectures. Each maps a batch to one prediction per task and describes its parameters.

See :class:`mtlrun.architecture.base.MTLModel` for the contract every architecture keeps.
"""
