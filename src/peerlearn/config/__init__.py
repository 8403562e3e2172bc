"""The run configuration: the schema (``schema``) and how a config is read (``loading``).

The recipes' own sections (``mutual``, ``distill``, ...) are defined in their recipe modules and entered
into ``RECIPE_SECTIONS`` by ``peerlearn.recipes.register_recipe``; a config accepts the section of its own
recipe only, and takes the members it leaves out from that recipe (``Recipe.defaults``).

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
    CHANGEABLE_ON_RESUME,
    Changeable,
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
    SECTION_READERS,
    default_recipe,
    default_section,
    find_recipe_class,
    name_members,
    register_section,
    set_recipe_finder,
)
from peerlearn.config.resume_keys import changeable_keys, changeable_on_resume
