"""Knowledge distillation (Hinton, Vinyals, Dean 2015): frozen teachers, students trained on soft targets.

Loss of a student with logits z, on a transfer item x with label y:

    kd  : L = α · CE(softmax(z), y) + (1 − α) · T² · KL(q ‖ softmax(z / T)),
          q = 1/M · Σ_m softmax(v_m / T)        (M teachers with logits v_m, probabilities averaged)
    mse : L = α · CE(softmax(z), y) + (1 − α) · ½ ‖z − v̄‖²,   v̄ = 1/M · Σ_m v_m

(``distill.method``; the feature, relational and logit-relation methods fitnets, at, sp, rkd, pkt, crd, dkd and
dist add their term to the CE, see ``recipes.distill_methods``). With α = 0 the transfer set needs no label.
The CE term is ``Recipe.supervised_loss`` (items labelled −1 are left out of it), so the shared regularisers
reach it.

Teachers are members with ``trainable: false`` (or listed in ``distill.teachers``). They come with
``weights`` (a run directory or a .safetensors file), or are trained first in a "teacher" stage of
``distill.teacher_epochs`` epochs (CE, their own augmentation), then frozen. Frozen teachers stay in
eval mode and run under ``torch.inference_mode``; when the transfer set is not augmented their targets
are computed once per transfer item (indexed by its position in the transfer set) and reused every epoch,
so a distillation step costs about what a student-only step costs. Methods that read layers cache the
teachers' layers too when they fit in ``distill.cache_limit_mb``. Layers are read with forward hooks
(``LayerTaps``) by module path; connectors (FitNets' regressors, CRD's heads and memory banks) are auxiliary
modules of the run: trained, checkpointed, saved and recorded.

Transfer set: the training split, the training split without labels, or another dataset; classes can
be left out of it (``omit_classes``). At prediction, ``class_bias`` is added to the students' logits,
and ``fit_class_bias`` searches that bias for the omitted classes on the validation split.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal, Optional, Union

import torch
from pydantic import Field, model_validator

from peerlearn.config import AugmentConfig, Changeable, DataConfig, Section
from peerlearn.data.batches import Batch, BatchStream
from peerlearn.data.bundle import Split
from peerlearn.engine.cohort import Cohort, Member
from peerlearn.engine.evaluation import predict, score, topk_accuracy
from peerlearn.engine.epoch_log import ensure_handler, logger
from peerlearn.engine.optim import build_optimizer, build_schedule
from peerlearn.engine.trainer import Callback, Stage
from peerlearn.errors import ConfigError
from peerlearn.losses import distillation_terms, soft_targets
from peerlearn.recipes.base import Recipe, default_network
from peerlearn.recipes.class_bias import bias_vector, find_class_bias, raw_logits, set_class_bias
from peerlearn.run_files import RUN_RECORD_NAME
from peerlearn.recipes.distill_methods import (KD_METHODS, LAYER_METHODS, OLD_LOSS_NAMES, ATSettings, CRDSettings,
                                               DISTSettings, DKDSettings, FitNetsSettings, LayerReader, Method,
                                               PKTSettings, RKDSettings, TeacherOutputs, bank_bytes, build_connector,
                                               logit_term, layer_term, method_weight)


class DistillConfig(Section):
    """Knowledge distillation: L = α · CE(student, y) + (1 − α) · T² · KL(q_teacher,T ‖ q_student,T)."""

    teachers: Optional[list[str]] = Field(
        None, description="names of the teacher members (default: the members with trainable: false); "
                          "every other member is a student")
    teacher_epochs: Optional[int] = Field(
        None, ge=0, description="> 0: first train the teachers this many epochs with CE, then freeze them; 0: "
                                "the teachers come trained (`weights`, or modules given from Python); default: "
                                "train.epochs when no teacher comes trained, else 0")
    teacher_augment: Optional[AugmentConfig] = Field(
        None, description="augmentation of the teacher stage (default: data.augment)")
    temperature: float = Changeable(4.0, gt=0, description="softmax temperature T of the soft targets")
    alpha: float = Changeable(0.1, ge=0, le=1, description="weight α of the hard-label CE term (0: no labels needed)")
    method: Method = Field(
        "kd", description="kd: α·CE + (1−α)·T²·KL of softened distributions; mse: α·CE + (1−α)·½‖z_student − "
                          "z_teacher‖²; fitnets, at, sp, rkd, pkt, crd, dkd, dist: CE + weight · the method's term "
                          "(docs/distillation.md). Replaces the former key distill.loss (kl = kd, logit_mse = mse)")
    weight: Optional[float] = Field(
        None, ge=0, description="weight of the method's term (default: its paper's: fitnets 100, at 500, sp 3000, "
                                "rkd 1, pkt 30000, crd 0.8, dkd 1, dist 1)")
    with_kd: bool = Field(False, description="add the KD term to the method's: L = α·CE + (1−α)·T²·KL + weight · term "
                                             "(false: L = CE + weight · term, as the papers)")
    student_layers: Optional[list[str]] = Field(
        None, description="the students' layers a feature method reads, by module path or stage name (several: "
                          "pairs with teacher_layers, in order); default: see docs/distillation.md")
    teacher_layers: Optional[Union[list[str], dict[str, list[str]]]] = Field(
        None, description="the teachers' layers paired with student_layers: one list for every teacher, or a list "
                          "per teacher name; default: see docs/distillation.md")
    fitnets: FitNetsSettings = Field(default_factory=FitNetsSettings, description="settings of method fitnets")
    at: ATSettings = Field(default_factory=ATSettings, description="settings of method at")
    rkd: RKDSettings = Field(default_factory=RKDSettings, description="settings of method rkd")
    pkt: PKTSettings = Field(default_factory=PKTSettings, description="settings of method pkt")
    crd: CRDSettings = Field(default_factory=CRDSettings, description="settings of method crd")
    dkd: DKDSettings = Field(default_factory=DKDSettings, description="settings of method dkd")
    dist: DISTSettings = Field(default_factory=DISTSettings, description="settings of method dist")
    transfer: Literal["train", "unlabelled", "data"] = Field(
        "train", description="transfer set: the training split, the training split without labels, or "
                             "distill.transfer_data")
    transfer_data: Optional[DataConfig] = Field(
        None, description="for transfer: data, another dataset; its whole training set (train + val parts, "
                          "labels dropped) is the transfer set")
    omit_classes: list[int] = Field(default_factory=list,
                                    description="classes removed from the transfer set (e.g. [3])")
    class_bias: dict[int, float] = Field(default_factory=dict,
                                         description="added to the students' logits at prediction, e.g. {3: 3.5}")
    fit_class_bias: bool = Field(
        False, description="after training, grid-search on the validation split the bias of each omitted class "
                           "that maximises accuracy, apply it and report it in summary.json")
    bias_grid: Optional[list[float]] = Field(
        None, description="candidate biases of fit_class_bias (default: 0, 0.25, ..., 10)")
    cache_teacher: bool = Field(
        True, description="compute the teachers' targets once per transfer item when the transfer set is "
                          "not augmented")
    cache_limit_mb: float = Field(
        1024.0, ge=0, description="largest cache of the teachers' layers (feature methods), in MB (float32); "
                                  "beyond it the teachers run on every batch")

    loss: Optional[Literal["kl", "logit_mse"]] = Field(
        None, description="deprecated: the former name of method (kl = kd, logit_mse = mse), still read with a "
                          "warning")

    @model_validator(mode="after")
    def _former_loss_key(self) -> "DistillConfig":
        """``distill.loss`` (kl | logit_mse), the key before ``distill.method``: read as kd | mse, with a warning."""
        if self.loss is None:
            return self
        method = OLD_LOSS_NAMES[self.loss]
        if "method" in self.model_fields_set and self.method != method:
            raise ValueError(f"'distill.loss: {self.loss}' (the former name of distill.method: {method}) contradicts "
                             f"'distill.method: {self.method}'; remove distill.loss")
        warnings.warn(f"The config key 'distill.loss: {self.loss}' is deprecated; write 'distill.method: {method}'.",
                      FutureWarning, stacklevel=1)
        # set without validate_assignment (which would run this validator again)
        self.__dict__.update(method=method, loss=None)
        self.model_fields_set.add("method")
        return self


DEFAULT_BIAS_GRID = [0.25 * i for i in range(41)]  # 0, 0.25, ..., 10


class DistillRecipe(Recipe):
    name = "distill"
    section = "distill"
    section_model = DistillConfig

    @classmethod
    def defaults(cls, config) -> dict[str, Any]:
        """A config without members: a teacher four times as wide as the student (small_cnn width 64 vs 16; for
        feature vectors an mlp of 800-800 units vs one of 100). It comes untrained, so the teacher stage trains
        it first (``distill.teacher_epochs`` left out: ``train.epochs``), then it is frozen and the student
        distils."""
        if default_network(config) == "mlp":
            teacher, student = {"model": "mlp", "model_args": {"widths": [800, 800]}}, \
                {"model": "mlp", "model_args": {"widths": [100]}}
        else:
            teacher, student = {"model": "small_cnn", "model_args": {"width": 64}}, \
                {"model": "small_cnn", "model_args": {"width": 16}}
        return {"members": [{"name": "teacher", "trainable": False, **teacher}, {"name": "student", **student}]}

    @classmethod
    def validate(cls, config, data) -> None:
        """Teachers and students that make sense, and distill settings that fit the data's classes."""
        super().validate(config, data)
        cls.roles(config)
        cls.check_settings(config, data)

    def __init__(self, config, data, device, distributed=None, user_members=None):
        super().__init__(config, data, device, distributed, user_members)
        self.settings = config.distill
        self.teacher_names, self.student_names = self.roles(config)
        if self.settings.teacher_epochs is None:  # resolved once, and recorded in the run's config
            self.settings.teacher_epochs = self._default_teacher_epochs()
        teacher_augment = self.settings.teacher_augment or config.data.augment
        self.teacher_stream = BatchStream(data.train, config.data.batch_size, self.normalizer, device,
                                          seed=config.seed, augment=self.batch_augment(teacher_augment),
                                          shuffle=True, drop_last=True)
        self.transfer = self._transfer_split()
        # the trainer's default stream (the distillation stage's) is the transfer set
        self.train_stream = BatchStream(self.transfer, config.data.batch_size, self.normalizer, device,
                                        seed=config.seed, augment=self.batch_augment(config.data.augment),
                                        shuffle=True, drop_last=True)
        self.phase = "distill"  # or "teacher" (distill.teacher_epochs > 0), "hint" (FitNets' first stage)
        self.teacher_cache: Optional[TeacherOutputs] = None  # the teachers' outputs on the whole transfer set
        self.cache_reason = ""  # why the teachers' outputs are not cached, if they are not
        self.cache_seconds = 0.0
        self.bias_report: dict[str, Any] = {}
        self.teacher_report: dict[str, Any] = {}  # check_teachers: the teachers' scores before distillation
        self.layers: Optional[LayerReader] = None  # hooks on the layers a feature method reads
        self.connectors: dict[str, str] = {}  # student -> its connector's (auxiliary module's) name
        self._student_layers: dict[str, list[torch.Tensor]] = {}  # this step's captured layers, by student

    @property
    def teaching(self) -> bool:
        """In the teacher stage (distill.teacher_epochs > 0)."""
        return self.phase == "teacher"

    @property
    def hint_epochs(self) -> int:
        """Epochs of FitNets' hint stage (0: no such stage)."""
        return self.settings.fitnets.hint_epochs if self.settings.method == "fitnets" else 0

    def active_method(self) -> str:
        """The method of the current stage: FitNets' two-stage schedule distils with plain KD after its hints."""
        return "kd" if self.hint_epochs and self.phase == "distill" else self.settings.method

    # ------------------------------------------------------------------ checks
    @staticmethod
    def roles(config) -> tuple[list[str], list[str]]:
        """(teacher names, student names): ``distill.teachers``, else the members with trainable: false."""
        members = config.members
        names = [m.name for m in members]
        teachers = config.distill.teachers
        if teachers is None:
            teachers = [m.name for m in members if not m.trainable]
        unknown = [t for t in teachers if t not in names]
        if unknown:
            raise ConfigError(f"Invalid config: key 'distill.teachers' names {unknown[0]!r}, which is not a member; "
                              f"allowed: {', '.join(names)}.")
        if not teachers:
            raise ConfigError("Invalid config: the distill recipe needs a teacher: give the teacher member(s) "
                              "'trainable: false' or list them in 'distill.teachers'.")
        students = [n for n in names if n not in teachers]
        if not students:
            raise ConfigError("Invalid config: the distill recipe needs a student: every member is a teacher "
                              f"({', '.join(teachers)}); add a trainable member.")
        for index, member in enumerate(members):
            if member.name in students and not member.trainable:
                raise ConfigError(f"Invalid config: key 'members.{index}.trainable' is false, but member "
                                  f"{member.name!r} is not listed in 'distill.teachers' ({', '.join(teachers)}); "
                                  "a student must be trainable.")
        return teachers, students

    def _comes_trained(self, member) -> bool:
        return bool(member.weights) or isinstance(self.user_members.get(member.name), torch.nn.Module)

    def _default_teacher_epochs(self) -> int:
        """``distill.teacher_epochs`` left out: 0 when every teacher comes trained, ``train.epochs`` when none does;
        a mix is ambiguous (would the trained ones train again?) and is refused."""
        teachers = [m for m in self.config.members if m.name in self.teacher_names]
        trained = [m.name for m in teachers if self._comes_trained(m)]
        if len(trained) == len(teachers):
            return 0
        if not trained:
            return self.config.train.epochs
        raise ConfigError(f"Invalid config: teachers {', '.join(trained)} come trained and "
                          f"{', '.join(m.name for m in teachers if m.name not in trained)} do not; set "
                          "'distill.teacher_epochs' (N > 0 trains every teacher first, 0 needs weights for all).")

    def _check_teacher_weights(self) -> None:
        """A teacher that is not trained here needs weights: from the config, or a module given from Python."""
        for index, member in enumerate(self.config.members):
            if member.name in self.teacher_names and self.settings.teacher_epochs == 0 and not self._comes_trained(member):
                raise ConfigError(f"Invalid config: teacher member {member.name!r} (members.{index}) has no "
                                  "'weights' and 'distill.teacher_epochs' is 0: give it weights (a run directory "
                                  "or a .safetensors file), pass the trained module from Python, or train it "
                                  "first with distill.teacher_epochs > 0.")

    @staticmethod
    def check_settings(config, data) -> None:
        s, classes = config.distill, data.num_classes
        if s.transfer in ("unlabelled", "data") and s.alpha > 0:
            raise ConfigError(f"Invalid config: key 'distill.alpha' has the value {s.alpha}, but the transfer set "
                              f"'{s.transfer}' has no labels; use distill.alpha=0 (soft targets only).")
        if s.transfer == "data" and s.transfer_data is None:
            raise ConfigError("Invalid config: key 'distill.transfer' is 'data' but 'distill.transfer_data' is not "
                              "set; give the other dataset there, e.g. {source: fashion_mnist}.")
        if s.transfer != "data" and s.transfer_data is not None:
            raise ConfigError(f"Invalid config: key 'distill.transfer_data' is set but 'distill.transfer' is "
                              f"{s.transfer!r}; set distill.transfer=data to use it.")
        for key, values in (("omit_classes", s.omit_classes), ("class_bias", list(s.class_bias))):
            bad = [c for c in values if not 0 <= c < classes]
            if bad:
                raise ConfigError(f"Invalid config: key 'distill.{key}' has the class {bad[0]}; allowed: "
                                  f"class indices 0..{classes - 1}.")
        if s.fit_class_bias and not s.omit_classes:
            raise ConfigError("Invalid config: key 'distill.fit_class_bias' is true but 'distill.omit_classes' is "
                              "empty; the bias is searched for omitted classes.")
        if s.fit_class_bias and len(data.val) == 0:
            raise ConfigError("Invalid config: key 'distill.fit_class_bias' needs a validation split, but "
                              "'data.val_fraction' is 0.")
        if s.fit_class_bias and s.bias_grid is not None and not s.bias_grid:
            raise ConfigError("Invalid config: key 'distill.bias_grid' is empty; give the candidate biases.")
        if s.method not in LAYER_METHODS and (s.student_layers or s.teacher_layers):
            raise ConfigError(f"Invalid config: key 'distill.student_layers' / 'distill.teacher_layers' is set, but "
                              f"distill.method {s.method!r} reads no layers; layers are read by "
                              f"{', '.join(LAYER_METHODS)}.")
        if s.method == "dkd" and s.transfer != "train":
            raise ConfigError(f"Invalid config: distill.method 'dkd' splits each item's target class from the others, "
                              f"so it needs labels, but 'distill.transfer' is {s.transfer!r}; use transfer: train or "
                              "another method.")
        if s.fitnets.hint_epochs and s.method != "fitnets":
            raise ConfigError(f"Invalid config: key 'distill.fitnets.hint_epochs' is {s.fitnets.hint_epochs}, but "
                              f"distill.method is {s.method!r}; the hint stage belongs to method fitnets.")
        if isinstance(s.teacher_layers, dict):
            teachers = DistillRecipe.roles(config)[0]
            unknown = [name for name in s.teacher_layers if name not in teachers]
            if unknown:
                raise ConfigError(f"Invalid config: key 'distill.teacher_layers.{unknown[0]}': not a teacher; "
                                  f"the teachers: {', '.join(teachers)}.")

    # ------------------------------------------------------------------ transfer set
    def _transfer_split(self) -> Split:
        """The items the students learn from: x, and y (−1 where no label may be used)."""
        s, data = self.settings, self.data
        if s.transfer == "data":
            from peerlearn.data.prepare import load_data

            other = load_data(s.transfer_data, seed=self.config.seed)
            x, true_labels = torch.cat([other.train.x, other.val.x]), torch.cat([other.train.y, other.val.y])
            if tuple(x.shape[1:]) != data.input_shape:
                raise ConfigError(f"Invalid config: 'distill.transfer_data' ({s.transfer_data.source}) has inputs of "
                                  f"shape {tuple(x.shape[1:])}, the run's data {data.input_shape}; set "
                                  "distill.transfer_data.image_size (or choose a dataset of the same shape).")
            labels = torch.full_like(true_labels, -1)
        else:
            x = data.train.x
            true_labels = data.train_labels_full if data.train_labels_full is not None else data.train.y
            labels = data.train.y.clone() if s.transfer == "train" else torch.full_like(data.train.y, -1)
        if s.omit_classes:
            keep = ~torch.isin(true_labels, torch.tensor(s.omit_classes, dtype=true_labels.dtype))
            x, labels = x[keep], labels[keep]
        if len(labels) == 0:
            raise ConfigError("Invalid config: the transfer set is empty after 'distill.omit_classes' "
                              f"{s.omit_classes}.")
        return Split(x, labels)

    # ------------------------------------------------------------------ members
    def build_cohort(self) -> Cohort:
        self._check_teacher_weights()
        s = self.settings
        members: list[Member] = []
        for index, member_config in enumerate(self.config.members):
            if member_config.name in self.teacher_names:
                trains_first = s.teacher_epochs > 0
                member = self.build_member(member_config.model_copy(update={"trainable": trains_first}), index,
                                           epochs=s.teacher_epochs or None, steps_per_epoch=len(self.teacher_stream))
            else:
                member = self.build_member(member_config, index, steps_per_epoch=len(self.train_stream))
                if s.teacher_epochs > 0:
                    member.trainable = False  # waits (eval mode, schedule still) during the teacher stage
                if s.class_bias:
                    set_class_bias(member.model, bias_vector(s.class_bias, self.data.num_classes, self.device))
            members.append(member)
        self.cohort = Cohort(members)
        if s.method in LAYER_METHODS:
            self._build_layer_method()
        return self.cohort

    def _build_layer_method(self) -> None:
        """Hooks on the layers the method reads, checked on one input; each student's connector (FitNets'
        regressors, CRD's heads and banks) declared as an auxiliary module of the run."""
        from peerlearn.recipes.base import member_seed
        from peerlearn.recipes.distill_methods import connector_spec

        s, method = self.settings, self.settings.method
        sample = self.normalizer(self.data.train.x[:2].to(self.device))
        self.layers = LayerReader(method, s, {n: self.cohort[n].model for n in self.student_names},
                                  {n: self.cohort[n].model for n in self.teacher_names}, sample)
        for index, name in enumerate(self.student_names):
            try:
                spec = connector_spec(method, s, self.layers.student_shapes(name), self.layers.teacher_shapes(),
                                      len(self.transfer))
                connector = None
                if spec is not None:
                    with torch.random.fork_rng(devices=[]):  # its own seed: the members' draws do not move
                        torch.manual_seed(member_seed(self.config.seed, 500 + index))
                        connector = build_connector(spec)
            except ValueError as error:
                raise ConfigError(f"Invalid config: distill.method {method!r} cannot connect student {name!r} "
                                  f"(layers {self.layers.student_layers[name]}, shapes "
                                  f"{self.layers.student_shapes(name)}) to the teachers' (shapes "
                                  f"{self.layers.teacher_shapes()}): {error}. Name other layers with "
                                  "distill.student_layers / distill.teacher_layers.") from None
            if connector is not None:
                aux = f"{name}_{'regressor' if method == 'fitnets' else method}"
                self.add_auxiliary(aux, connector, {**spec, "student": name},
                                   epochs=self.hint_epochs or self.config.train.epochs,
                                   steps_per_epoch=len(self.train_stream))
                self.connectors[name] = aux
                connector = self.cohort[aux].model
            self.layers.check(method, s, name, connector, self.data.num_classes)

    @classmethod
    def build_auxiliary(cls, name: str, spec: dict[str, Any]) -> torch.nn.Module:
        """A student's connector (FitNets' regressors, CRD's heads and memory banks) from its recorded spec."""
        return build_connector(spec)

    def network_forward(self, member: Member, x: torch.Tensor, with_features: bool):
        """A student's training forward; the layers the current stage's method reads are captured on the way
        (forward hooks: the same pass, in the graph)."""
        taps = self.layers.student_taps.get(member.name) if self.layers is not None else None
        if taps is None or self.phase == "teacher" or self.active_method() not in LAYER_METHODS:
            return super().network_forward(member, x, with_features)
        with taps.capture() as seen:
            out = super().network_forward(member, x, with_features)
        self._student_layers[member.name] = [seen[layer].float() for layer in taps.layers]
        return out

    def stages(self) -> list[Stage]:
        stages = []
        if self.settings.teacher_epochs > 0:
            stages.append(Stage("teacher", self.settings.teacher_epochs, self.step, start=self.start_teacher_stage,
                                eval_members=self.teacher_names, ensemble_members=self.teacher_names,
                                train_stream=self.teacher_stream))
        if self.hint_epochs:
            stages.append(Stage("hint", self.hint_epochs, self.step, start=self.start_hint_stage,
                                eval_members=self.teacher_names + self.student_names,
                                ensemble_members=self.student_names))
        stages.append(Stage("distill", self.config.train.epochs, self.step, start=self.start_distillation,
                            eval_members=self.teacher_names + self.student_names,
                            ensemble_members=self.student_names))
        return stages

    def start_teacher_stage(self) -> None:
        """Stage 1: the teachers train (CE on the augmented training batches), the students (and their
        connectors) wait."""
        self.phase = "teacher"
        self._set_trainable(students=False, connectors=False)

    def start_hint_stage(self) -> None:
        """FitNets' first stage: freeze the teachers; the students (up to their guided layers: nothing above gets
        a gradient) and their regressors learn the hints alone, with an optimizer and schedule of this stage."""
        self._freeze_teachers()
        self.phase = "hint"
        self._set_trainable(students=True, connectors=True)
        self._fresh_student_optimizers(self.hint_epochs)
        self._fill_cache()

    def start_distillation(self) -> None:
        """Freeze the teachers, wake the students (and their connectors, unless FitNets' hint stage is over:
        the paper then drops the regressor), and cache the teachers' outputs when possible."""
        self._freeze_teachers()
        self.phase = "distill"
        self._set_trainable(students=True, connectors=not self.hint_epochs)
        if self.hint_epochs:  # the KD stage starts a new optimisation of the hint-initialised students
            self._fresh_student_optimizers(self.config.train.epochs)
        self.check_teachers()
        self._fill_cache()

    def _freeze_teachers(self) -> None:
        for name in self.teacher_names:
            member = self.cohort[name]
            member.trainable, member.optimizer, member.schedule = False, None, None
            member.model.requires_grad_(False)
            member.model.eval()

    def _set_trainable(self, students: bool, connectors: bool) -> None:
        for name in self.student_names:
            self.cohort[name].trainable = students
        for aux in self.connectors.values():
            self.cohort[aux].trainable = connectors

    def _fresh_student_optimizers(self, epochs: int) -> None:
        """New optimizers and schedules (over ``epochs`` epochs of the transfer set) for the students: FitNets'
        two stages are two optimisations. Deterministic, so a resumed stage loads its saved state into them."""
        for index, member_config in enumerate(self.config.members):
            if member_config.name in self.student_names:
                member = self.cohort[member_config.name]
                member.optimizer = build_optimizer(member.model, self.config.member_optim(member_config))
                member.schedule = build_schedule(member.optimizer, self.config.member_schedule(member_config), epochs,
                                                 len(self.train_stream))

    def _fill_cache(self) -> None:
        """The teachers' outputs (logits, and the layers the stage's method reads) for every transfer item,
        computed once when the transfer set is not augmented (and the layers fit in distill.cache_limit_mb)."""
        s, with_layers = self.settings, self.active_method() in LAYER_METHODS
        self.teacher_cache, self.cache_reason = None, ""
        if not s.cache_teacher:
            self.cache_reason = "distill.cache_teacher is false"
        elif self.train_stream.augment.active:
            self.cache_reason = "the transfer set is augmented (data.augment): the teachers see new inputs each step"
        elif with_layers:
            megabytes = len(self.transfer) * self.layers.teacher_item_elements() * 4 / 2**20
            if megabytes > s.cache_limit_mb:
                self.cache_reason = (f"the teachers' layers of the {len(self.transfer):,} transfer items would take "
                                     f"{megabytes:,.0f} MB, more than distill.cache_limit_mb ({s.cache_limit_mb:g})")
        if self.cache_reason:
            if with_layers:
                ensure_handler()
                logger.info(f"distill: the teachers run on every batch ({self.cache_reason}).")
            return
        started = time.perf_counter()
        stream = BatchStream(self.transfer, self.config.data.eval_batch_size, self.normalizer, self.device,
                             shuffle=False)
        with torch.inference_mode():
            parts = [self.teacher_outputs(batch.x, with_layers) for _, batch in stream.epoch(0)]
        self.teacher_cache = TeacherOutputs.cat(parts)  # normal tensors, usable next to autograd
        self.cache_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ the teachers' check
    def check_teachers(self) -> None:
        """Score the teachers, and the students as they start, on the validation split before distilling
        (a fresh distillation stage only; a resumed one keeps the first check). A teacher near chance
        (``near_chance``) or not above a student's start gets a warning naming the likely causes."""
        position = self.trainer.position if self.trainer is not None else None
        if len(self.data.val) == 0 or (position is not None and (position.epoch or position.step_in_epoch)):
            return
        names = self.teacher_names + self.student_names
        logits, labels = predict(self.cohort, self.eval_streams["val"], names, progress="off")
        top1 = {name: topk_accuracy(z, labels, 1) for name, z in logits.items()}
        classes = self.data.num_classes
        start = max(top1[name] for name in self.student_names)
        report: dict[str, Any] = {"split": "val", "chance": 1 / classes,
                                  "teachers": {t: top1[t] for t in self.teacher_names},
                                  "students_at_start": {s: top1[s] for s in self.student_names}, "warnings": []}
        for index, member in enumerate(self.config.members):
            if member.name not in self.teacher_names:
                continue
            score_now = top1[member.name]
            if score_now >= near_chance(classes) and score_now > start:
                continue
            why = (f"near chance ({1 / classes:.1%} with {classes} classes)" if score_now < near_chance(classes)
                   else f"not above the students at their start ({start:.1%})")
            message = (f"Teacher {member.name!r} (members.{index}) scores {score_now:.1%} top-1 on the validation "
                       f"split before distillation: {why}. Distilling from it teaches its errors. Likely causes: "
                       f"{teacher_mismatch(member.weights, self.data) or _LIKELY_CAUSES}")
            report["warnings"].append(message)
            warnings.warn(message, stacklevel=2)
        self.teacher_report = report

    # ------------------------------------------------------------------ loss
    def teacher_outputs(self, x: torch.Tensor, with_layers: bool = False) -> TeacherOutputs:
        """Every teacher's logits (and, ``with_layers``, the layers the method reads) through the engine's
        inference forward (``Recipe.infer``: inference mode, the run's autocast); constants for the losses."""
        logits, layers = [], []
        for name in self.teacher_names:
            member = self.cohort[name]
            taps = self.layers.teacher_taps[name] if with_layers else None
            if taps is None:
                logits.append(self.infer(member, x))
                layers.append([])
                continue
            with taps.capture() as seen:
                logits.append(self.infer(member, x))
            values = [seen[layer].float() for layer in taps.layers]
            layers.append(values if torch.is_inference_mode_enabled() else [v.clone() for v in values])
        return TeacherOutputs(logits, layers)

    def teacher_outputs_for(self, batch: Batch, with_layers: bool = False) -> TeacherOutputs:
        if self.teacher_cache is not None:
            return self.teacher_cache.index(batch.index)
        return self.teacher_outputs(batch.x, with_layers)

    @property
    def soft_loss(self) -> str:
        """The KD term's kind (``distillation_terms``): logit matching for method mse, else T²·KL."""
        return "logit_mse" if self.active_method() == "mse" else "kl"

    def teacher_targets(self, x: torch.Tensor) -> torch.Tensor:
        """q (mean of the teachers' probabilities at T) for kd, or v̄ (mean logits) for mse."""
        return soft_targets(self.teacher_outputs(x).logits, self.settings.temperature, self.soft_loss)

    def targets_for(self, batch: Batch) -> torch.Tensor:
        return soft_targets(self.teacher_outputs_for(batch).logits, self.settings.temperature, self.soft_loss)

    @property
    def target_cache(self) -> Optional[torch.Tensor]:
        """The KD targets of every transfer item, from the cached teachers' logits (None when not cached)."""
        if self.teacher_cache is None:
            return None
        return soft_targets(self.teacher_cache.logits, self.settings.temperature, self.soft_loss)

    def _epoch(self) -> int:
        """The current epoch of the stage, counted from 1 (DKD's warm-up)."""
        return (self.trainer.position.epoch if self.trainer is not None else 0) + 1

    def student_loss(self, name: str, logits: torch.Tensor, targets: Optional[torch.Tensor], batch: Batch,
                     features: Optional[torch.Tensor] = None, teacher: Optional[TeacherOutputs] = None,
                     layers: Optional[list[torch.Tensor]] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A student's loss (``recipes.distill_methods``): the KD term (``peerlearn.losses.distillation_terms``,
        its hard term the shared supervised loss, CE with the regularisers) for kd and mse and with
        ``with_kd``, else the CE alone; plus weight · the method's term (``teacher``: the teachers' outputs,
        ``layers``: the student's layers the method reads)."""
        s, method = self.settings, self.active_method()
        if method in KD_METHODS or s.with_kd:
            hard = self.supervised_loss(name, logits, batch.y, features) if s.alpha > 0 else None
            terms = distillation_terms(logits, targets, batch.y, s.temperature, s.alpha, self.soft_loss,
                                       hard_loss=hard)
            loss, parts = terms.loss, {"soft": terms.soft.detach()}
            if terms.hard is not None:
                parts["ce"] = terms.hard.detach()
        else:
            loss = self.supervised_loss(name, logits, batch.y, features)
            parts = {"ce": loss.detach()}
        if method in KD_METHODS:
            return loss, parts
        term, extra = self.method_term(name, logits, teacher, batch, layers)
        parts.update(extra)
        return loss + method_weight(s) * term, parts

    def method_term(self, name: str, logits: torch.Tensor, teacher: TeacherOutputs, batch: Batch,
                    layers: Optional[list[torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's term, unweighted, and the parts to log (the term under the method's name)."""
        method = self.settings.method
        if method in LAYER_METHODS:
            connector = self.cohort[self.connectors[name]].model if name in self.connectors else None
            term = layer_term(method, self.settings, layers, teacher, connector, batch.index)
            return term, {method: term.detach()}
        term, parts = logit_term(method, self.settings, logits, teacher, batch.y, self._epoch())
        return term, {method: term.detach(), **parts}

    def step_members(self) -> list[Member]:
        """The teachers in the teacher stage, the students afterwards."""
        names = self.teacher_names if self.teaching else self.student_names
        return [self.cohort[name] for name in names]

    def losses(self, out, batch: Batch, names: list[str]):
        """Teacher stage: CE of each teacher. Hint stage (FitNets): weight · hint loss of each student.
        Distillation stage: each student's ``student_loss`` against the teachers' outputs for the batch
        (computed once, or looked up in the cache, and shared by the students)."""
        if self.teaching:
            return super().losses(out, batch, names)
        s, method = self.settings, self.active_method()
        teacher = self.teacher_outputs_for(batch, with_layers=method in LAYER_METHODS)
        captured, self._student_layers = self._student_layers, {}
        if self.phase == "hint":
            result = {}
            for name in names:
                term, parts = self.method_term(name, out.logits[name], teacher, batch, captured.get(name))
                result[name] = (method_weight(s) * term, parts)
            return result
        targets = (soft_targets(teacher.logits, s.temperature, self.soft_loss)
                   if method in KD_METHODS or s.with_kd else None)
        return {name: self.student_loss(name, out.logits[name], targets, batch, out.features.get(name), teacher,
                                        captured.get(name)) for name in names}

    # ------------------------------------------------------------------ class bias
    def callbacks(self) -> list[Callback]:
        # after the shared ones: early stopping restores the best weights before the bias is fitted
        callbacks = super().callbacks()
        return callbacks + [FitClassBias(self)] if self.settings.fit_class_bias else callbacks

    def fit_biases(self) -> None:
        """For each student: search the omitted classes' biases on validation, report, and install them."""
        s = self.settings
        omitted = torch.tensor(s.omit_classes)
        start = {c: b for c, b in s.class_bias.items() if c not in s.omit_classes}
        for name in self.student_names:
            model = self.cohort[name].model
            logits = {split: raw_logits(model, stream) for split, stream in self.eval_streams.items()
                      if len(stream.split) > 0}
            found = find_class_bias(*logits["val"], s.omit_classes, s.bias_grid or DEFAULT_BIAS_GRID, start)
            report: dict[str, Any] = {"bias": found["bias"], "val_accuracy": found["accuracy"], "splits": {}}
            for label, biases in (("configured", dict(s.class_bias)), ("fitted", found["bias"])):
                vector = bias_vector(biases, self.data.num_classes)
                for split, (z, y) in logits.items():
                    predicted = (z + vector).argmax(1)
                    on_omitted = torch.isin(y, omitted)
                    report["splits"].setdefault(split, {})[label] = {
                        **score(torch.log_softmax(z + vector, 1), y),
                        "errors": int((predicted != y).sum()),
                        "errors_on_omitted": int((predicted != y)[on_omitted].sum()),
                        "omitted_items": int(on_omitted.sum()),
                    }
            self.bias_report[name] = report
            set_class_bias(model, bias_vector(found["bias"], self.data.num_classes, self.device))

    def _method_summary(self) -> dict[str, Any]:
        """The method's weight, layers and connectors (CRD: its memory banks' bytes) for summary.json."""
        s = self.settings
        if s.method in KD_METHODS:
            return {}
        out: dict[str, Any] = {"weight": method_weight(s), "with_kd": s.with_kd}
        if self.layers is not None:
            out["layers"] = {"students": self.layers.student_layers, "teachers": self.layers.teacher_layers}
        if self.connectors:
            modules = {aux: self.cohort[aux].model for aux in self.connectors.values()}
            out["connectors"] = {aux: {"parameters": sum(p.numel() for p in m.parameters()),
                                       "bank_bytes": bank_bytes(m)} for aux, m in modules.items()}
        return out

    def role(self, name: str) -> str:
        return "teacher" if name in self.teacher_names else "student"

    def summary_extra(self) -> dict[str, Any]:
        s = self.settings
        return {**super().summary_extra(), "distill": {
            "teachers": self.teacher_names,
            "students": self.student_names,
            "method": s.method,
            "temperature": s.temperature,
            "alpha": s.alpha,
            **self._method_summary(),
            "transfer": s.transfer,
            "transfer_size": len(self.transfer),
            "omit_classes": list(s.omit_classes),
            "class_bias": {str(c): b for c, b in s.class_bias.items()},
            "teacher_cache": self.teacher_cache is not None,
            "teacher_cache_reason": self.cache_reason,
            "cache_seconds": round(self.cache_seconds, 3),
            "fitted_class_bias": self.bias_report,
            "teacher_check": self.teacher_report,
        }}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "teacher_check": self.teacher_report}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.teacher_report = state.get("teacher_check", self.teacher_report)


_LIKELY_CAUSES = ("the teacher's inputs were normalised otherwise (other mean/std, data.normalize, or images "
                  "scaled differently) or its classes are numbered in another order; check where its weights "
                  "come from.")


def near_chance(classes: int) -> float:
    """The top-1 below which a teacher counts as near chance: min(2/C, 1/C + 0.2)."""
    return min(2 / classes, 1 / classes + 0.2)


def teacher_mismatch(weights: Optional[str], data) -> str:
    """What differs between the run a teacher's weights come from (``RUN_DIR`` or ``RUN_DIR:member``) and this
    run's data: the normalisation statistics, the class names; "" when unknown or equal."""
    import json

    from peerlearn.engine.initial_weights import split_source

    if not weights:
        return ""
    folder, _ = split_source(weights)
    record_file = folder / RUN_RECORD_NAME if folder.is_dir() else None
    if record_file is None or not record_file.is_file():
        return ""
    try:
        recorded = json.loads(record_file.read_text())["data"]
    except (OSError, ValueError, KeyError):
        return ""
    found = []
    normalization = recorded.get("normalization", {})
    theirs = (normalization.get("mean"), normalization.get("std"))
    ours = (list(data.mean), list(data.std))
    if theirs[0] is not None and (len(theirs[0]) != len(ours[0]) or any(
            abs(a - b) > 1e-3 * max(1.0, abs(b)) for a, b in zip(theirs[0] + theirs[1], ours[0] + ours[1]))):
        found.append(f"its run normalised inputs with mean {_short(theirs[0])} and std {_short(theirs[1])}, this "
                     f"run with mean {_short(ours[0])} and std {_short(ours[1])} (data.normalize, data.image_size "
                     "or another dataset)")
    names = recorded.get("class_names")
    if names is not None and list(names) != list(data.class_names):
        found.append(f"its run's classes are {_short(names)}, this run's {_short(data.class_names)} (another order "
                     "or other classes)")
    return "; ".join(found) + "." if found else ""


def _short(values) -> str:
    shown = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in list(values)[:6]]
    return "[" + ", ".join(shown) + (", ...]" if len(values) > 6 else "]")


class FitClassBias(Callback):
    """At the end of training (before the final evaluation), fit and install the omitted classes' biases."""

    def __init__(self, recipe: DistillRecipe):
        self.recipe = recipe

    def on_fit_end(self, trainer) -> None:
        self.recipe.fit_biases()
