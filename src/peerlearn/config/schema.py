"""The run configuration's schema: typed, validated sections.

Every key is checked before anything trains. A wrong key, type or value raises ``ConfigError``
(through ``peerlearn.config.loading``) with one paragraph that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
import types
from typing import Annotated, Any, Callable, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from peerlearn.section_providers import load_section_providers

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


CHANGEABLE_ON_RESUME = {"resume": "changeable"}  # a field's json_schema_extra: `--resume --change` may set it


def Changeable(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - used like pydantic's Field
    """``Field(...)`` of a setting that a resumed run may change (``peerlearn train --resume RUN --change KEY=V``).

    Declare a field with it only when a new value leaves the data, the models and the stage layout alone (the
    checkpoint's state stays valid): learning rates, loss weights, logging. ``peerlearn.config.resume_keys``
    reads the declarations; on a dict-valued field it covers every entry."""
    return Field(*args, json_schema_extra=CHANGEABLE_ON_RESUME, **kwargs)


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
    eval_batch_size: int = Changeable(1024, gt=0)
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
    lr: float = Changeable(0.1, gt=0)
    momentum: float = Changeable(0.9, ge=0, lt=1, description="SGD / RMSProp momentum")
    nesterov: bool = Changeable(False)
    weight_decay: float = Changeable(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    betas: tuple[Probability, Probability] = Changeable((0.9, 0.999), description="Adam/AdamW β1, β2, each in [0, 1)")
    alpha: float = Changeable(0.99, gt=0, lt=1, description="RMSProp smoothing constant")
    eps: float = Changeable(1e-8, gt=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimConfig":
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self


class ScheduleConfig(Section):
    """Learning-rate schedule, stepped once per epoch (one-cycle: once per step)."""

    name: Literal["constant", "step", "multistep", "cosine", "onecycle"] = "constant"
    step_size: int = Changeable(30, gt=0, description="step: epochs between decays")
    milestones: list[Annotated[int, Field(ge=0)]] = Changeable(default_factory=list,
                                                          description="multistep: epochs at which lr decays")
    gamma: float = Changeable(0.1, gt=0, le=1)
    min_lr: float = Changeable(0.0, ge=0, description="cosine: final learning rate")
    max_lr: Optional[float] = Changeable(None, gt=0, description="onecycle: peak lr (default: optim.lr)")
    warmup_fraction: float = Changeable(0.3, gt=0, lt=1, description="onecycle: fraction of steps rising")


class MemberConfig(Section):
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                                description="unique name: letters, digits, _ and - (default: m0, m1, ...)")
    model: str = Field("small_cnn", description="model name from the registry")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")
    optim: Optional[dict[str, Any]] = Changeable(None, description="overrides of the top-level optim for this member")
    schedule: Optional[dict[str, Any]] = Changeable(None, description="overrides of the top-level schedule for this "
                                                                      "member")
    weights: Optional[str] = Field(None, description="initial weights: a .safetensors or .pt file (read without running "
                                                     "code; a plain state_dict of your own network needs no key "
                                                     "prefix), a peerlearn run directory (its member of this name, "
                                                     "or its only one) or RUN_DIR:member")
    trainable: bool = Field(True, description="false makes a frozen member (a teacher)")
    max_norm: Optional[float] = Changeable(
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
    epochs: int = Changeable(10, gt=0)
    device: str = Changeable("auto", pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$",
                             description="auto, cpu, cuda, cuda:N, mps")
    deterministic: bool = Field(True, description="deterministic kernels and seeded data order")
    progress: Literal["auto", "on", "off"] = Changeable("auto", description="progress bar (auto: only on a terminal)")
    eval_every: int = Changeable(1, gt=0, description="evaluate every N epochs (and always at the end)")
    eval_test: bool = Changeable(False, description="also evaluate on the test split every evaluation (default: "
                                                     "validation each evaluation, test once at the end, so that "
                                                     "choices are made on validation)")
    checkpoint_every_steps: Optional[int] = Changeable(None, gt=0, description="also checkpoint every N steps")
    threads: Optional[int] = Changeable(None, gt=0, description="torch CPU threads (default: torch's choice)")


class TrackingConfig(Section):
    """Where metrics go besides metrics.jsonl (always written)."""

    tensorboard: bool = Changeable(True, description="TensorBoard events in RUN_DIR/tensorboard")
    mlflow: Union[bool, str] = Changeable(False, description="also log the flattened config and the metrics to "
                                                             "MLflow (needs peerlearn[mlflow]): true = a SQLite "
                                                             "file RUN_DIR/mlflow.db; or any MLflow tracking URI, "
                                                             "shared by many runs: sqlite:////abs/mlflow.db, "
                                                             "http://host:5000 (a tracking server), "
                                                             "file:///abs/mlruns")
    mlflow_experiment: str = Changeable("peerlearn", min_length=1, description="the MLflow experiment the runs "
                                                                               "are logged under")

    @field_validator("mlflow")
    @classmethod
    def _tracking_uri(cls, value):
        if isinstance(value, str) and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value):
            raise ValueError("tracking.mlflow is true, false or an MLflow tracking URI such as "
                             "sqlite:////abs/path/mlflow.db, http://127.0.0.1:5000 or file:///abs/mlruns")
        return value
    log_every_steps: int = Changeable(50, ge=0, description="log one training step's loss terms and learning rates "
                                                       "every N global steps (metrics.jsonl kind 'step', "
                                                       "TensorBoard, MLflow); 0: only per-epoch means")


# --------------------------------------------------------------------------- regularisation
class EarlyStoppingConfig(Section):
    """Stop when the validation metric has not improved for ``patience`` evaluations; restore the best weights."""

    enabled: bool = Changeable(False, description="turn early stopping on (needs a validation split)")
    metric: Literal["top1", "top5", "nll"] = Changeable("top1", description="validation metric watched (nll: lower "
                                                                            "is better)")
    of: str = Changeable("mean", description="whose metric: mean (over the evaluated members), ensemble, or a "
                                             "member name")
    patience: int = Changeable(10, ge=0, description="evaluations without improvement before stopping")
    min_delta: float = Changeable(0.0, ge=0, description="smallest change that counts as an improvement")
    restore_best: bool = Changeable(True, description="load the best evaluation's weights at the end")


class RegularizeConfig(Section):
    """Overfitting controls shared by every recipe (added to each member's supervised term).

    L = CE_ε(z, y) + l1 · Σ|w| + l2/2 · Σw² + center_loss · 1/(2m) Σ_i ‖f_i − c_{y_i}‖²
    (w: weight matrices and kernels, not biases or normalisation parameters).
    """

    label_smoothing: float = Changeable(0.0, ge=0, lt=1, description="ε: target (1−ε)·onehot + ε/C")
    l1: float = Changeable(0.0, ge=0, description="λ₁ of the L1 penalty λ₁·Σ|w| on weights")
    l2: float = Changeable(0.0, ge=0, description="λ₂ of the explicit L2 penalty λ₂/2·Σw² on weights "
                      "(optim.weight_decay is the optimizer's own, on every parameter)")
    center_loss: float = Changeable(0.0, ge=0, description="λ_C of the centre loss (Wen et al. 2016), 0 = off")
    center_alpha: float = Changeable(0.5, gt=0, le=1, description="α: learning rate of the class centres")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


# --------------------------------------------------------------------------- engine (how the cohort runs)
class EngineConfig(Section):
    """How the cohort is executed. None of these changes the maths of a recipe (bf16 changes rounding)."""

    fused: bool = Field(False, description="run members of one architecture as one batched model (packed: "
                                           "layers grouped by member, else torch.func vmap); mutual/independent, "
                                           "simultaneous update")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast of the forward passes "
                                                                   "(CUDA only; ignored with a warning on CPU)")
    compile: bool = Field(False, description="torch.compile each member's forward (CPU and CUDA)")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor, aot_eager, eager)")
    channels_last: Optional[bool] = Field(None, description="channels-last memory format for convolutional "
                                          "members and image batches; unset: on for CPU runs (oneDNN convolutions "
                                          "and pooling are faster in it), off on CUDA")
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
# for the shipped recipes when ``peerlearn.recipes`` is imported. The config layer imports no recipe: it
# asks the registry for the chosen recipe's class through the finder the registry installs
# (``set_recipe_finder``), and reads the section, defaults and rules off that class. The package root declares
# ``peerlearn.recipes`` a section provider (``peerlearn.section_providers``), imported by name before the finder
# is first asked, so that ``import peerlearn`` stays light.
RECIPE_SECTIONS: dict[str, type[Section]] = {}
SECTION_READERS: dict[str, list[str]] = {}  # section key -> the registered recipes that read it
_RECIPE_FINDER: list[Callable[[str, bool], Optional[type]]] = []
_DEFAULT_RECIPE: list[str] = []


def register_section(name: str, section: type[Section], recipe: Optional[str] = None) -> None:
    """Accept the top-level key ``name``, validated by ``section`` (a ``Section`` subclass), in the config of
    ``recipe`` (the registered name of the recipe that reads it)."""
    if not (isinstance(section, type) and issubclass(section, Section)):
        raise TypeError(f"the section of {name!r} must be a peerlearn.config.Section subclass, got {section!r}")
    if name in RunConfig.model_fields:
        raise ValueError(f"{name!r} is a built-in config section; choose another name for the recipe's section")
    RECIPE_SECTIONS[name] = section
    if recipe is not None and recipe not in SECTION_READERS.setdefault(name, []):
        SECTION_READERS[name].append(recipe)


def set_recipe_finder(finder: Callable[[str, bool], Optional[type]], default: str) -> None:
    """Install ``finder(recipe_value, import_code)``: the recipe class a config's ``recipe`` value names, None when
    it is code that may not be imported here; it raises ``ConfigError`` for a value naming no recipe.
    ``default`` is the recipe of a config that names none. ``peerlearn.recipes`` installs its registry's
    ``find_recipe`` when it is imported."""
    _RECIPE_FINDER[:] = [finder]
    _DEFAULT_RECIPE[:] = [default]


def default_recipe() -> str:
    """The recipe of a config that names none, as the recipe registry declares it."""
    load_section_providers()  # the shipped recipes install the registry's finder when imported
    if not _DEFAULT_RECIPE:
        raise ValueError("no recipe registry is loaded (import peerlearn.recipes)")
    return _DEFAULT_RECIPE[0]


def find_recipe_class(value: str, import_code: bool = True) -> Optional[type]:
    """The class of recipe ``value`` through the installed finder (None when none is installed)."""
    load_section_providers()
    return _RECIPE_FINDER[0](value, import_code) if _RECIPE_FINDER else None


def default_section(section: type[BaseModel]) -> Optional[BaseModel]:
    """The section with every key at its default, or None when it has required keys."""
    try:
        return section()
    except ValidationError:
        return None


def name_members(members: list["MemberConfig"]) -> list["MemberConfig"]:
    """Default names (m0, m1, ...) for unnamed members; names unique, not 'ensemble'; one member trainable."""
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


def _unset(config: BaseModel, parts: list[str]) -> Optional[tuple[BaseModel, str]]:
    """(the model holding the last key, the key) when the dotted key ``parts`` was left out of ``config``."""
    node: Any = config
    for part in parts[:-1]:
        node = getattr(node, part, None)
        if not isinstance(node, BaseModel):
            return None
    return (node, parts[-1]) if parts[-1] not in node.model_fields_set else None


class RunConfig(Section):
    """A whole run: what to train (members), on what (data), how (recipe, optim, train).

    Besides these keys, the section of the run's recipe (``mutual``, ``distill``, ``greedy``, ``transfer``, or
    one of your own recipe) is accepted under its key and read as ``config.<key>``; any other top-level key,
    another recipe's section included, is refused. The members left out come from the recipe
    (``Recipe.defaults``)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="run name, used in the run directory")
    recipe: str = Field(default_factory=default_recipe, description="a registered recipe name, or a recipe of your own as "
                                                    "package.module:Class (its module is imported)")
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = Field(default_factory=DataConfig)
    members: list[MemberConfig] = Field(default_factory=lambda: [MemberConfig(), MemberConfig()],
                                        validate_default=True,
                                        description="the cohort; left out: the recipe's default members")
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
        return name_members(members)

    @model_validator(mode="after")
    def _recipe_owns_its_keys(self, info: ValidationInfo) -> "RunConfig":
        """The chosen recipe's section, validated by its schema (its defaults when left out or null); any other
        top-level key refused, another recipe's section by name (null: left out); then the recipe's defaults (``Recipe.defaults``:
        its members, ...) for the keys the config leaves out.

        A reference recipe (``package.module:Class``) is imported unless the reader of the config says not
        to (``import_code`` false in the validation context: a run read back). Found without importing, its
        section cannot be checked: it is left out, the rest of the config is read as usual."""
        import_code = bool((info.context or {}).get("import_code", True))
        try:
            recipe = find_recipe_class(self.recipe, import_code)
        except Exception as error:  # the finder's ConfigError: reported as this key's value error
            raise ValueError(str(error).removeprefix("Invalid config: ").rstrip(".")) from None
        unresolved = recipe is None
        own_key = getattr(recipe, "section", None)
        own_model = getattr(recipe, "section_model", None) if own_key else None
        extra = self.__pydantic_extra__
        for key, value in list(extra.items()):
            if value is None and (key in RECIPE_SECTIONS or key == own_key):
                del extra[key]  # `mutual=null`: the section left out (an override cannot delete a key otherwise)
            elif key == own_key and own_model is not None:
                if not isinstance(value, own_model):
                    if not isinstance(value, dict):
                        raise ValueError(f"key '{key}' has the value {value!r}: the section must be a mapping of keys")
                    check_partial_section(key, own_model, value)
                    extra[key] = own_model(**value)
            elif key in RECIPE_SECTIONS and not unresolved:
                readers = ", ".join(SECTION_READERS.get(key, [])) or "another recipe"
                reads = f"whose section is '{own_key}'" if own_key else "which has no section"
                raise ValueError(f"key '{key}' holds the settings of recipe {readers}, but this run's recipe is "
                                 f"{self.recipe!r}, {reads}; remove '{key}', or set recipe: {readers.split(', ')[0]}")
            elif unresolved and _RECIPE_FINDER:
                del extra[key]  # a section of a recipe not imported here: not checkable, not needed to read
            else:
                allowed = ", ".join([*type(self).model_fields, *([own_key] if own_key else [])])
                raise ValueError(f"key '{key}' is not a known key; allowed here: {allowed}")
        if own_key and own_model is not None and own_key not in extra:
            default = default_section(own_model)
            if default is not None:
                extra[own_key] = default
        defaults = getattr(recipe, "defaults", None)
        if defaults is not None:
            self._apply_defaults(defaults(self))
        return self

    def _apply_defaults(self, defaults: dict[str, Any]) -> None:
        """Set each dotted key of ``defaults`` that the config left out (a recipe's defaults, validated)."""
        for key, value in defaults.items():
            parts = key.split(".")
            if parts == ["members"]:
                if "members" not in self.model_fields_set:
                    members = [m if isinstance(m, MemberConfig) else MemberConfig(**m) for m in value]
                    self.__dict__["members"] = name_members(members)  # no re-validation of the whole config
                continue
            found = _unset(self, parts)
            if found is not None:
                setattr(*found, value)  # validated by the section's assignment check

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
