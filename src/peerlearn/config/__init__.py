"""The run configuration: the schema (``schema``) and how a config is read (``loading``).

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
    MutualConfig,
    DistillConfig,
    GreedyStageConfig,
    GreedyConfig,
    TrainConfig,
    TrackingConfig,
    EarlyStoppingConfig,
    RegularizeConfig,
    EngineConfig,
    check_engine,
    BackboneConfig,
    DomainDataConfig,
    TransferConfig,
    RunConfig,
    EXTRA_SECTIONS,
    register_section,
)
