"""Regularisers over task-specific layers (`regularizer=` config group): a penalty added to the objective,
never balanced by a weighting method. See `mtlrun.regularizer.base`."""
