"""mtlrun's Hydra launcher plugin: ``hydra/launcher=parallel`` (see `.parallel_launcher`).

It lives in Hydra's ``hydra_plugins`` namespace package because Hydra instantiates launchers only from there;
the mtlrun distribution ships it beside the ``mtlrun`` package.
"""
