"""mtlrun's Hydra sweeper plugin: ``hydra/sweeper=variants`` (see `.variant_sweeper`).

It lives in Hydra's ``hydra_plugins`` namespace package because Hydra instantiates sweepers and launchers only
from there; the mtlrun distribution ships it beside the ``mtlrun`` package.
"""
