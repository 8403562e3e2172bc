"""The run configuration's schema: typed, validated sections.

Every key is checked before anything trains. A wrong key, type or value raises ``ConfigError``
(through ``peerlearn.config.loading``) with one paragraph that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

FLOAT32_MAX = 3.4028234663852886e38
INT64_LIMIT = 2**63


def strict_problem(annotation: Any, value: Any) -> Optional[str]:
    """Why ``value`` may not fill a field typed ``annotation`` under strict rules, or None.

    Pydantic's lax mode would turn ``true`` into 1, ``"3"`` into 3 and ``1`` into true; here numbers
    must be numbers (finite, within float32 / int64 range: a larger lr overflows in float32 training)
    and flags must be true or false. Lists, tuples and dict values are checked item by item.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return strict_problem(args[0], value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [strict_problem(arg, value) for arg in args if arg is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false is expected"
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        if isinstance(value, bool):
            return f"{kind} is expected, not true/false"
        if isinstance(value, str):
            return f"{kind} is expected, not a string"
        if isinstance(value, float) and not math.isfinite(value):
            return "the number must be finite"
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            return f"the number is out of range (beyond ±{FLOAT32_MAX:.3g}, the float32 limit)"
        if isinstance(value, int) and abs(value) >= INT64_LIMIT:
            return "the number is out of range (it must fit in 64 bits)"
        return None
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if origin is list or (len(args) == 2 and args[1] is Ellipsis):
                item_type = args[0] if args else Any
            else:
                item_type = args[index] if index < len(args) else Any
            problem = strict_problem(item_type, item)
            if problem:
                return f"item {index}: {problem}"
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        for key, item in value.items():
            problem = strict_problem(args[1], item)
            if problem:
                return f"entry {key!r}: {problem}"
    return None


def known_source(value: str) -> str:
    """A dataset source name from the registry (``peerlearn datasets`` lists them)."""
    from peerlearn.data.registry import SOURCES

    if value not in SOURCES:
        raise ValueError(f"unknown dataset source; allowed: {', '.join(sorted(SOURCES))}")
    return value


def check_partial_section(where: str, section: type["Section"], partial: dict[str, Any],
                          base: Optional["Section"] = None) -> None:
    """Validate ``partial`` (overrides of ``section`` at key ``where``, on top of ``base`` when given);
    raise ValueError naming the offending key and value."""
    unknown = sorted(set(partial) - set(section.model_fields))
    if unknown:
        raise ValueError(f"key '{where}.{unknown[0]}' is not a known key; allowed here: "
                         f"{', '.join(section.model_fields)}")
    try:
        section(**{**(base.model_dump() if base is not None else {}), **partial})
    except ValidationError as error:
        first = error.errors()[0]
        sub = ".".join(str(p) for p in first["loc"])
        key = f"{where}.{sub}" if sub else where
        if first["type"] == "missing":
            raise ValueError(f"key '{key}' is required (missing)") from None
        value = first.get("input")
        shown = "{...}" if isinstance(value, dict) else repr(value)
        raise ValueError(f"key '{key}' has the value {shown}: {first['msg'].removeprefix('Value error, ')}") from None


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_values(cls, value: Any, info: ValidationInfo) -> Any:
        """Strict scalars (see ``strict_problem``), before pydantic's lax conversions."""
        field = cls.model_fields.get(info.field_name or "")
        problem = strict_problem(field.annotation, value) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value


# --------------------------------------------------------------------------- data
class AugmentConfig(Section):
    """Batched augmentation applied on the training device (training split only)."""

    crop_padding: int = Field(0, ge=0, description="pad by this many pixels, then random-crop back (0 = off)")
    flip: bool = Field(False, description="random horizontal flip")
    jitter: int = Field(0, ge=0, description="random translation of up to this many pixels (Hinton's ±2)")


class DataConfig(Section):
    source: str = Field("digits", description="dataset source; `peerlearn datasets` lists them")
    root: Optional[str] = Field(None, description="data directory (default: $PEERLEARN_DATA, then ~/.cache/peerlearn)")
    path: Optional[str] = Field(None, description="folder or file for sources that need one (image_folder, tabular)")
    download: bool = Field(True, description="download missing official files when a network is available")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the training set held out for validation")
    train_subset: Optional[int] = Field(None, gt=0, description="use only this many training images (stratified, seeded)")
    val_size: Optional[int] = Field(
        None, gt=0, description="validation items instead of val_fraction; with train_subset they are drawn "
        "from the training items the subset left out"
    )
    labelled: Optional[float] = Field(
        None, gt=0, description="semi-supervised: fraction (<=1) or per-class count (>1) of training labels kept"
    )
    image_size: Optional[int] = Field(None, gt=0, description="resize images to this size (None keeps the native size)")
    normalize: bool = Field(True, description="standardise inputs with the training split's mean and std")
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="source-specific options")
    stream: Union[Literal["auto"], bool] = Field(
        "auto", description="read items lazily through a DataLoader with worker processes instead of holding the "
                            "decoded data in memory; auto: stream image folders larger than stream_threshold_mb "
                            "decoded, and Datasets given from Python")
    stream_workers: int = Field(2, ge=0, description="streaming: DataLoader worker processes (0 = in this process)")
    stream_threshold_mb: float = Field(2048.0, gt=0, description="stream=auto: stream when the decoded training "
                                                                 "images would exceed this many MiB")

    _known_source = field_validator("source")(known_source)

    @model_validator(mode="after")
    def _known_options(self) -> "DataConfig":
        from peerlearn.data.registry import SOURCES

        own = SOURCES[self.source].options
        allowed = None if own is None else ("verify", *(o for o in own if o != "verify"))  # verify: every source
        unknown = sorted(set(self.options) - set(allowed)) if allowed is not None else []
        if unknown:
            raise ValueError(f"key 'data.options.{unknown[0]}' is not an option of the source {self.source!r}; "
                             f"its options: {', '.join(allowed) or 'none'}")
        return self


# --------------------------------------------------------------------------- optimisation
Probability = Annotated[float, Field(ge=0, lt=1)]
class OptimConfig(Section):
    """Optimizer of one member. Keys left unset in a member fall back to the top-level ``optim``."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD / RMSProp momentum")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    betas: tuple[Probability, Probability] = Field((0.9, 0.999), description="Adam/AdamW β1, β2, each in [0, 1)")
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSProp smoothing constant")
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimConfig":
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self


class ScheduleConfig(Section):
    """Learning-rate schedule, stepped once per epoch (one-cycle: once per step)."""

    name: Literal["constant", "step", "multistep", "cosine", "onecycle"] = "constant"
    step_size: int = Field(30, gt=0, description="step: epochs between decays")
    milestones: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list,
                                                          description="multistep: epochs at which lr decays")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0, description="cosine: final learning rate")
    max_lr: Optional[float] = Field(None, gt=0, description="onecycle: peak lr (default: optim.lr)")
    warmup_fraction: float = Field(0.3, gt=0, lt=1, description="onecycle: fraction of steps rising")


class MemberConfig(Section):
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                                description="unique name: letters, digits, _ and - (default: m0, m1, ...)")
    model: str = Field("small_cnn", description="model name from the registry")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")
    optim: Optional[dict[str, Any]] = Field(None, description="overrides of the top-level optim for this member")
    schedule: Optional[dict[str, Any]] = Field(None, description="overrides of the top-level schedule for this member")
    weights: Optional[str] = Field(None, description="initial weights: a .safetensors or .pt file (read without running code) or a peerlearn run directory")
    trainable: bool = Field(True, description="false makes a frozen member (a teacher)")
    max_norm: Optional[float] = Field(
        None, gt=0, description="max-norm constraint: after each optimizer step, every unit's incoming weight "
                                "vector is scaled down to this L2 norm if longer (Hinton/Srivastava dropout nets)")

    features_from: Optional[str] = Field(
        None, description="networks of your own (package.module:factory, timm:<name>): submodule whose output "
                          "gives the penultimate features, read by a forward hook (name:input reads its input; "
                          "default: the input of the last nn.Linear)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from peerlearn.models import available_models
        from peerlearn.models.user import is_reference

        if value not in available_models() and not is_reference(value):
            raise ValueError(f"unknown model; allowed: {', '.join(available_models())}, "
                             "package.module:factory or timm:<name>")
        return value


class AuxiliaryConfig(Section):
    """Settings of one auxiliary trainable module of a recipe (a gate, a connector, a projection head)."""

    optim: Optional[dict[str, Any]] = Field(None, description="overrides of the top-level optim for this module")
    schedule: Optional[dict[str, Any]] = Field(None, description="overrides of the top-level schedule for this module")


class TrainConfig(Section):
    epochs: int = Field(10, gt=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$", description="auto, cpu, cuda, cuda:N, mps")
    deterministic: bool = Field(True, description="deterministic kernels and seeded data order")
    progress: Literal["auto", "on", "off"] = Field("auto", description="progress bar (auto: only on a terminal)")
    eval_every: int = Field(1, gt=0, description="evaluate every N epochs (and always at the end)")
    eval_test: bool = Field(False, description="also evaluate on the test split every evaluation (default: "
                                                "validation each evaluation, test once at the end, so that "
                                                "choices are made on validation)")
    checkpoint_every_steps: Optional[int] = Field(None, gt=0, description="also checkpoint every N steps")
    threads: Optional[int] = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")


class TrackingConfig(Section):
    """Where metrics go besides metrics.jsonl (always written)."""

    tensorboard: bool = Field(True, description="TensorBoard events in RUN_DIR/tensorboard")
    mlflow: Union[bool, str] = Field(False, description="also log the flattened config and the metrics to MLflow "
                                                        "(needs peerlearn[mlflow]): true = a SQLite file "
                                                        "RUN_DIR/mlflow.db; or any MLflow tracking URI, shared by "
                                                        "many runs: sqlite:////abs/mlflow.db, "
                                                        "http://host:5000 (a tracking server), file:///abs/mlruns")
    mlflow_experiment: str = Field("peerlearn", min_length=1, description="the MLflow experiment the runs are "
                                                                          "logged under")

    @field_validator("mlflow")
    @classmethod
    def _tracking_uri(cls, value):
        if isinstance(value, str) and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value):
            raise ValueError("tracking.mlflow is true, false or an MLflow tracking URI such as "
                             "sqlite:////abs/path/mlflow.db, http://127.0.0.1:5000 or file:///abs/mlruns")
        return value
    log_every_steps: int = Field(50, ge=0, description="log one training step's loss terms and learning rates "
                                                       "every N global steps (metrics.jsonl kind 'step', "
                                                       "TensorBoard, MLflow); 0: only per-epoch means")


# --------------------------------------------------------------------------- regularisation
class EarlyStoppingConfig(Section):
    """Stop when the validation metric has not improved for ``patience`` evaluations; restore the best weights."""

    enabled: bool = Field(False, description="turn early stopping on (needs a validation split)")
    metric: Literal["top1", "top5", "nll"] = Field("top1", description="validation metric watched (nll: lower is better)")
    of: str = Field("mean", description="whose metric: mean (over the evaluated members), ensemble, or a member name")
    patience: int = Field(10, ge=0, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    restore_best: bool = Field(True, description="load the best evaluation's weights at the end")


class RegularizeConfig(Section):
    """Overfitting controls shared by every recipe (added to each member's supervised term).

    L = CE_ε(z, y) + l1 · Σ|w| + l2/2 · Σw² + center_loss · 1/(2m) Σ_i ‖f_i − c_{y_i}‖²
    (w: weight matrices and kernels, not biases or normalisation parameters).
    """

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="ε: target (1−ε)·onehot + ε/C")
    l1: float = Field(0.0, ge=0, description="λ₁ of the L1 penalty λ₁·Σ|w| on weights")
    l2: float = Field(0.0, ge=0, description="λ₂ of the explicit L2 penalty λ₂/2·Σw² on weights "
                      "(optim.weight_decay is the optimizer's own, on every parameter)")
    center_loss: float = Field(0.0, ge=0, description="λ_C of the centre loss (Wen et al. 2016), 0 = off")
    center_alpha: float = Field(0.5, gt=0, le=1, description="α: learning rate of the class centres")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


# --------------------------------------------------------------------------- engine (how the cohort runs)
class EngineConfig(Section):
    """How the cohort is executed. None of these changes the maths of a recipe (bf16 changes rounding)."""

    fused: bool = Field(False, description="run members of one architecture as one batched model "
                                           "(torch.func vmap); mutual/independent, simultaneous update")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast of the forward passes "
                                                                   "(CUDA only; ignored with a warning on CPU)")
    compile: bool = Field(False, description="torch.compile each member's forward (CPU and CUDA)")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor, aot_eager, eager)")
    channels_last: bool = Field(False, description="channels-last memory format for models and image batches "
                                                   "(CUDA only; ignored with a warning on CPU)")
    pin_memory: bool = Field(False, description="keep the training split in pinned host memory and copy each "
                                                "batch asynchronously (CUDA only; ignored with a warning on CPU)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="distributed runs: process-group "
                                                                         "backend (auto: nccl on CUDA, gloo on CPU)")
    dist_timeout: float = Field(120.0, gt=0, le=86400, description="distributed runs: seconds a process waits for "
                                "the others in a collective before the run stops with exit code 5 (a dead or "
                                "stalled process)")


def check_engine(config: "RunConfig") -> None:
    """Cross-section rules of ``engine`` that need no recipe: a fused cohort needs members of one architecture.

    Whether the recipe runs fused or distributed at all, on frozen members or with its own settings (e.g.
    ``mutual.update``), is the recipe's rule (``Recipe.check_capabilities``).
    """
    engine = config.engine
    if not engine.fused:
        return
    if engine.compile:
        raise ValueError("keys 'engine.fused' and 'engine.compile' are both true; choose one")
    first = config.members[0]
    for member in config.members[1:]:
        if (member.model, member.model_args) != (first.model, first.model_args):
            raise ValueError(f"key 'engine.fused' is true, but members {first.name!r} ({first.model} "
                             f"{first.model_args}) and {member.name!r} ({member.model} {member.model_args}) "
                             "differ in architecture; a fused cohort needs one model with the same model_args")


# --------------------------------------------------------------------------- root
# The recipes' sections, by their top-level YAML key. Each recipe declares its own (``section`` and
# ``section_model`` on its class, in its module); ``peerlearn.recipes.register_recipe`` enters it here,
# for the shipped recipes when ``peerlearn.recipes`` is imported. The config layer imports no recipe.
RECIPE_SECTIONS: dict[str, type[Section]] = {}


def register_section(name: str, section: type[Section]) -> None:
    """Accept the top-level key ``name``, validated by ``section`` (a ``Section`` subclass)."""
    if not (isinstance(section, type) and issubclass(section, Section)):
        raise TypeError(f"the section of {name!r} must be a peerlearn.config.Section subclass, got {section!r}")
    if name in RunConfig.model_fields:
        raise ValueError(f"{name!r} is a built-in config section; choose another name for the recipe's section")
    RECIPE_SECTIONS[name] = section


def default_section(section: type[BaseModel]) -> Optional[BaseModel]:
    """The section with every key at its default, or None when it has required keys."""
    try:
        return section()
    except ValidationError:
        return None


class RunConfig(Section):
    """A whole run: what to train (members), on what (data), how (recipe, optim, train).

    Besides these keys, each registered recipe's section (``mutual``, ``distill``, ``greedy``, ``transfer``,
    and any of your own recipes) is accepted under its key and read as ``config.<key>``; other top-level keys
    are refused."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name, used in the run directory")
    recipe: str = Field("independent", description="recipe name")
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    members: list[MemberConfig] = Field(default_factory=lambda: [MemberConfig(), MemberConfig()],
                                        validate_default=True)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    regularize: RegularizeConfig = Field(default_factory=RegularizeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    auxiliary: dict[str, AuxiliaryConfig] = Field(
        default_factory=dict, description="per auxiliary module of the recipe (gate, connector, head; by name): "
                                          "optim / schedule overrides (default: the members' optim and schedule)")

    @field_validator("members", mode="after")
    @classmethod
    def _members_named_uniquely(cls, members: list[MemberConfig]) -> list[MemberConfig]:
        if not members:
            raise ValueError("the cohort is empty; give at least one member")
        names = []
        for index, member in enumerate(members):
            if member.name is None:
                member.name = f"m{index}"
            names.append(member.name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"member names must be unique; repeated: {', '.join(duplicates)}")
        if "ensemble" in names:
            raise ValueError(f"key 'members.{names.index('ensemble')}.name' has the value 'ensemble', which is "
                             "reserved for the cohort's ensemble; choose another name")
        if not any(member.trainable for member in members):
            raise ValueError("every member has trainable=false; at least one member must learn")
        return members

    @model_validator(mode="after")
    def _member_overrides_valid(self) -> "RunConfig":
        for index, member in enumerate(self.members):
            for key, section, base in (("optim", OptimConfig, self.optim), ("schedule", ScheduleConfig, self.schedule)):
                partial = getattr(member, key)
                if partial is None:
                    continue
                check_partial_section(f"members.{index}.{key}", section, partial, base)
        return self

    @model_validator(mode="after")
    def _recipe_sections(self) -> "RunConfig":
        """Top-level keys beyond the built-in ones must be the sections of registered recipes
        (``RECIPE_SECTIONS``), each validated by its schema; a recipe section left out takes its defaults."""
        extra = self.__pydantic_extra__
        for key, value in list(extra.items()):
            section = RECIPE_SECTIONS.get(key)
            if section is None:
                allowed = ", ".join([*type(self).model_fields, *RECIPE_SECTIONS])
                raise ValueError(f"key '{key}' is not a known key; allowed here: {allowed}")
            if not isinstance(value, section):
                if not isinstance(value, dict):
                    raise ValueError(f"key '{key}' has the value {value!r}: the section must be a mapping of keys")
                check_partial_section(key, section, value)
                extra[key] = section(**value)
        for key, section in RECIPE_SECTIONS.items():
            if key not in extra:
                default = default_section(section)
                if default is not None:
                    extra[key] = default
        return self

    @model_validator(mode="after")
    def _engine_valid(self) -> "RunConfig":
        check_engine(self)
        return self

    # Resolved, per-member views -------------------------------------------------
    def member_optim(self, member: MemberConfig) -> OptimConfig:
        return OptimConfig(**{**self.optim.model_dump(), **(member.optim or {})})

    def member_schedule(self, member: MemberConfig) -> ScheduleConfig:
        return ScheduleConfig(**{**self.schedule.model_dump(), **(member.schedule or {})})

    def auxiliary_optim(self, name: str) -> OptimConfig:
        """The optimizer settings of auxiliary module ``name``: the top-level optim with its overrides."""
        settings = self.auxiliary.get(name)
        return OptimConfig(**{**self.optim.model_dump(), **((settings.optim if settings else None) or {})})

    def auxiliary_schedule(self, name: str) -> ScheduleConfig:
        settings = self.auxiliary.get(name)
        return ScheduleConfig(**{**self.schedule.model_dump(), **((settings.schedule if settings else None) or {})})
