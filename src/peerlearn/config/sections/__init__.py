"""Config sections owned by one recipe each (``mutual``, ``distill``, ``greedy``, ``transfer``).

Only pydantic and the shared sections of ``config.schema`` are imported here: the config layer never
imports a recipe. ``RunConfig`` holds one field per module.
"""
