"""The run configuration: the schema (``schema``) and how a config is read (``loading``).

The recipes' own sections (``mutual``, ``distill``, ...) are defined in their recipe modules and entered
into ``RECIPE_SECTIONS`` by ``peerlearn.recipes.register_recipe``.

Everything public is importable from ``peerlearn.config``.
"""

from peerlearn.config.loading import (
    apply_override,
    build_config,
    load_config,
    parse_override,
    read_yaml,
    config_yaml,
)
from peerlearn.config.schema import (
    known_source,
    check_partial_section,
    Section,
    AugmentConfig,
    DataConfig,
    OptimConfig,
    ScheduleConfig,
    MemberConfig,
    TrainConfig,
    TrackingConfig,
    EarlyStoppingConfig,
    RegularizeConfig,
    EngineConfig,
    check_engine,
    RunConfig,
    RECIPE_SECTIONS,
    default_section,
    register_section,
)
