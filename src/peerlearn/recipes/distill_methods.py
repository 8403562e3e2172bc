"""The distillation methods of the distill recipe (``distill.method``): the term each adds to a student's loss,
the layers it reads and the connectors it trains.

A student with logits z, on a transfer item with label y, minimises (T = ``distill.temperature``, α =
``distill.alpha``, w = ``distill.weight``, default the paper's weight ``FEATURE_LOSS_WEIGHTS[method]``):

    kd       L = α · CE(z, y) + (1 − α) · T² · KL(q_T ‖ softmax(z / T))          (Hinton et al.)
    mse      L = α · CE(z, y) + (1 − α) · ½ ‖z − v̄‖²                              (logit matching)
    other    L = CE(z, y) + w · L_method                                          (``with_kd: false``)
             L = α · CE(z, y) + (1 − α) · T² · KL(q_T ‖ softmax(z / T)) + w · L_method   (``with_kd: true``)

with L_method one of (the functions of ``peerlearn.losses``; several teachers: the mean of the term over the
teachers, each against its own connector)

    fitnets  Σ_pairs hint_loss(r(v_g), u_h)        r: a ``HintRegressor`` per (teacher, layer pair), a connector
    at       attention_transfer_loss over the layer pairs
    sp       similarity_preserving_loss over the layer pairs
    rkd      Σ_pairs rkd_loss (λ_D, λ_A inside)
    pkt      Σ_pairs pkt_loss
    crd      CRDLoss(f_S, f_T, item indices): embedding heads + two memory banks of one row per transfer item
    dkd      dkd_warmup(epoch) · dkd_loss(z, v, y)   (its own α, β, T in ``distill.dkd``)
    dist     dist_loss(z, v)                         (its own β, γ, τ in ``distill.dist``)

FitNets with ``distill.fitnets.hint_epochs: N > 0`` is the paper's two-stage training: a stage "hint" of N epochs
minimises w · L_HT alone (only the student's layers up to the guided one, and the regressor, get a gradient),
then the stage "distill" is plain KD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import torch
from pydantic import Field
from torch import nn

from peerlearn.config import Section
from peerlearn.errors import ConfigError
from peerlearn.losses import (FEATURE_LOSS_WEIGHTS, CRDLoss, HintRegressor, attention_transfer_loss, dist_terms,
                              dkd_terms, dkd_warmup, hint_loss, pkt_loss, rkd_loss, similarity_preserving_loss)
from peerlearn.models.taps import STAGE, last_stage, penultimate, resolve_layer, stage_paths

METHODS = ("kd", "mse", "fitnets", "at", "sp", "rkd", "pkt", "crd", "dkd", "dist")
KD_METHODS = ("kd", "mse")  # the KD term itself
LAYER_METHODS = ("fitnets", "at", "sp", "rkd", "pkt", "crd")  # read intermediate layers
OLD_LOSS_NAMES = {"kl": "kd", "logit_mse": "mse"}  # the former distill.loss values
Method = Literal["kd", "mse", "fitnets", "at", "sp", "rkd", "pkt", "crd", "dkd", "dist"]


# --------------------------------------------------------------------------- settings of each method
class FitNetsSettings(Section):
    """FitNets (Romero et al. 2015): the hint loss between a regressor of the student's guided layer and the
    teacher's hint layer."""

    hint_epochs: int = Field(0, ge=0, description="> 0: the paper's two stages: first this many epochs of the "
                                                  "hint loss alone (the student up to its guided layer, and the "
                                                  "regressor), then train.epochs of plain KD; 0: one stage of "
                                                  "CE + weight · hint loss (RepDistiller)")
    reduction: Literal["paper", "mean"] = Field(
        "mean", description="paper: ½ Σ over each item's elements; mean: over every element (RepDistiller, "
                            "with which the default weight 100 was chosen)")
    activation: Literal["relu", "none"] = Field("relu", description="non-linearity after the regressor (the "
                                                                    "paper: the hint layer's own)")
    batch_norm: bool = Field(False, description="BatchNorm in the regressor (RepDistiller's ConvReg)")


class ATSettings(Section):
    """Attention transfer (Zagoruyko & Komodakis 2017)."""

    p: float = Field(2.0, gt=0, description="power of the attention map Σ_c |A_c|^p")
    squared: bool = Field(True, description="true: the authors' code's squared distance, with which the default "
                                            "weight 500 (β/2) was chosen; false: the paper's ‖Q_S − Q_T‖₂, about "
                                            "2–3 times larger on small maps")


class RKDSettings(Section):
    """Relational KD (Park et al. 2019)."""

    distance_weight: float = Field(25.0, ge=0, description="λ_D of the distance term")
    angle_weight: float = Field(50.0, ge=0, description="λ_A of the angle term")


class PKTSettings(Section):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018)."""

    variant: Literal["paper", "code"] = Field(
        "code", description="code: the authors' implementation, with which the default weight 30000 was chosen; "
                            "paper: the KL of the paper")


class CRDSettings(Section):
    """Contrastive representation distillation (Tian et al. 2020): memory banks of one row per transfer item."""

    feature_dim: int = Field(128, ge=1, description="dimension D of the embeddings")
    negatives: int = Field(16384, ge=1, description="negatives K drawn per item from the memory bank")
    temperature: float = Field(0.07, gt=0, description="temperature τ of the critic")
    momentum: float = Field(0.5, ge=0, lt=1, description="momentum of the memory banks' update")
    variant: Literal["paper", "code"] = Field(
        "code", description="code: the authors' critic (e(u) divided by Z fixed on the first batch), with which "
                            "the default weight 0.8 was chosen; paper: the critic as the paper writes it, whose "
                            "loss starts near K · h ≈ 10³ with K = 16384 and needs a much smaller weight")


class DKDSettings(Section):
    """Decoupled KD (Zhao et al. 2022): α · TCKD + β · NCKD at its own temperature."""

    alpha: float = Field(1.0, ge=0, description="weight α of the target-class term TCKD")
    beta: float = Field(8.0, ge=0, description="weight β of the non-target term NCKD")
    temperature: float = Field(4.0, gt=0, description="temperature T of DKD")
    warmup_epochs: float = Field(20.0, ge=0, description="the term is ramped in linearly over this many epochs")


class DISTSettings(Section):
    """DIST (Huang et al. 2022): inter- and intra-class Pearson relations."""

    beta: float = Field(1.0, ge=0, description="weight β of the inter-class relation")
    gamma: float = Field(1.0, ge=0, description="weight γ of the intra-class relation")
    temperature: float = Field(1.0, gt=0, description="temperature τ of DIST")


def method_weight(settings) -> float:
    """w: ``distill.weight``, else the paper's weight of the method (``FEATURE_LOSS_WEIGHTS``)."""
    return settings.weight if settings.weight is not None else FEATURE_LOSS_WEIGHTS.get(settings.method, 1.0)


# --------------------------------------------------------------------------- layers
def _stages(model: nn.Module) -> list[str]:
    """The model's stage aliases ``stage1``, ``stage2``, ... shallow to deep."""
    aliases = [a for a in stage_paths(model) if STAGE.fullmatch(a)]
    return sorted(aliases, key=lambda a: int(STAGE.fullmatch(a).group(1)))


def default_layers(method: str, student: nn.Module, teachers: Sequence[nn.Module]) -> tuple[list[str], list[list[str]]]:
    """The layers a method reads when ``distill.student_layers`` / ``teacher_layers`` name none: (the student's,
    each teacher's). FitNets: the middle stage of each network (the paper's guided and hint layers, ``stage⌈k/2⌉``
    of k stages); AT: the last k stages of each, k the fewest stages of any of the networks (AT's several
    depths); SP: the last stage; RKD, PKT and CRD: the penultimate features (the embedding). A network without
    stage names gives its penultimate features."""
    if method == "fitnets":
        def pick(model):
            stages = _stages(model)
            return [resolve_layer(model, stages[(len(stages) - 1) // 2]).spec if stages else penultimate(model)]
    elif method == "at":
        depth = min(len(_stages(m)) for m in (student, *teachers))
        if depth == 0:
            raise ConfigError("Invalid config: distill.method 'at' compares feature maps at several depths, but "
                              "a network has no stage names; name the layers with distill.student_layers and "
                              "distill.teacher_layers (`peerlearn layers CONFIG` lists them).")

        def pick(model):
            return [resolve_layer(model, s).spec for s in _stages(model)[-depth:]]
    elif method == "sp":
        def pick(model):
            return [last_stage(model)]
    else:
        def pick(model):
            return [penultimate(model)]
    return pick(student), [pick(t) for t in teachers]


class LayerReader:
    """Forward hooks (``LayerTaps``) on the layers a method reads: the students' (``distill.student_layers``, in
    the graph) and the teachers' (``distill.teacher_layers``, a list for every teacher or one per teacher name),
    defaults from ``default_layers``. Every layer is checked once at build time with a normal no-grad pass in
    eval mode (it exists, the forward reaches it, nothing overwrites it in place), which also gives its shape."""

    def __init__(self, method: str, settings, students: dict[str, nn.Module], teachers: dict[str, nn.Module],
                 sample: torch.Tensor):
        from peerlearn.models.taps import LayerTaps

        given_students, given_teachers = settings.student_layers, settings.teacher_layers
        defaults = {name: default_layers(method, model, list(teachers.values())) for name, model in students.items()}
        first = next(iter(defaults.values()))
        self.student_layers = {name: list(given_students) if given_students else defaults[name][0]
                               for name in students}
        self.teacher_layers: dict[str, list[str]] = {}
        for index, name in enumerate(teachers):
            if isinstance(given_teachers, dict):
                layers = given_teachers.get(name) or first[1][index]
            else:
                layers = list(given_teachers) if given_teachers else first[1][index]
            self.teacher_layers[name] = layers
        counts = {len(v) for v in (*self.student_layers.values(), *self.teacher_layers.values())}
        if len(counts) != 1:
            raise ConfigError(f"Invalid config: distill.method {method!r} pairs the students' layers with the teachers' "
                              f"in order, but they name different numbers of layers (students: "
                              f"{self.student_layers}, teachers: {self.teacher_layers}); give distill.student_layers "
                              "and distill.teacher_layers of the same length.")

        def taps(model, layers, key, name):
            try:
                return LayerTaps(model, layers)
            except ConfigError as error:
                raise ConfigError(f"Invalid config: key 'distill.{key}' (member {name!r}): {error}") from None

        self.student_taps = {n: taps(m, self.student_layers[n], "student_layers", n) for n, m in students.items()}
        self.teacher_taps = {n: taps(m, self.teacher_layers[n], "teacher_layers", n) for n, m in teachers.items()}
        self.student_probe = {n: self._probe(m, self.student_taps[n], sample, "student_layers", n)
                              for n, m in students.items()}
        self.teacher_probe = {n: self._probe(m, self.teacher_taps[n], sample, "teacher_layers", n)
                              for n, m in teachers.items()}

    @staticmethod
    def _probe(model: nn.Module, taps, sample: torch.Tensor, key: str, name: str) -> list[torch.Tensor]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), taps.capture() as seen:
                model(sample)
            values = [seen[layer] for layer in taps.layers]
        except ConfigError as error:
            raise ConfigError(f"Invalid config: key 'distill.{key}' (member {name!r}): {error}") from None
        finally:
            model.train(was_training)
        for layer, value in zip(taps.layers, values):
            if not isinstance(value, torch.Tensor) or value.dim() < 2:
                raise ConfigError(f"Invalid config: key 'distill.{key}' (member {name!r}): the layer {layer!r} gives "
                                  f"{type(value).__name__ if not isinstance(value, torch.Tensor) else list(value.shape)}"
                                  ", not a tensor [batch, ...]; name another layer.")
        return values

    def shapes(self, values: list[torch.Tensor]) -> list[list[int]]:
        return [list(v.shape[1:]) for v in values]

    def student_shapes(self, name: str) -> list[list[int]]:
        return self.shapes(self.student_probe[name])

    def teacher_shapes(self) -> list[list[list[int]]]:
        return [self.shapes(values) for values in self.teacher_probe.values()]

    def teacher_item_elements(self) -> int:
        """Elements of one item over every teacher's layers (what a cache of them holds per transfer item)."""
        return sum(elements_per_item(shapes) for shapes in self.teacher_shapes())

    def check(self, method: str, settings, name: str, connector: Optional[nn.Module], num_classes: int) -> None:
        """Compute the method's term once on the probe pass (no gradient, connectors in eval mode, the random
        state untouched), so that layers that cannot be compared fail now, naming them."""
        teacher = TeacherOutputs([torch.zeros(2, num_classes) for _ in self.teacher_probe],
                                 list(self.teacher_probe.values()))
        was_training = connector.training if connector is not None else False
        try:
            if connector is not None:
                connector.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                layer_term(method, settings, self.student_probe[name], teacher, connector,
                           torch.arange(2, device=self.student_probe[name][0].device))
        except (ValueError, RuntimeError) as error:
            shapes = {"student": dict(zip(self.student_layers[name], self.student_shapes(name))),
                      **{t: dict(zip(self.teacher_layers[t], shape))
                         for t, shape in zip(self.teacher_layers, self.teacher_shapes())}}
            raise ConfigError(f"Invalid config: distill.method {method!r} cannot compare the layers of student {name!r} "
                              f"with the teachers' (shapes without the batch: {shapes}): {error}. Name other layers "
                              "with distill.student_layers / distill.teacher_layers (`peerlearn layers CONFIG` lists "
                              "them with their shapes).") from None
        finally:
            if connector is not None:
                connector.train(was_training)

    def remove(self) -> None:
        for taps in (*self.student_taps.values(), *self.teacher_taps.values()):
            taps.remove()


# --------------------------------------------------------------------------- teachers' outputs
@dataclass
class TeacherOutputs:
    """The teachers' outputs for a batch: ``logits[m]`` [N, C] of teacher m and ``layers[m][j]`` its layer of
    pair j (empty when the method reads no layer). Constants: no graph, no gradient."""

    logits: list[torch.Tensor]
    layers: list[list[torch.Tensor]]

    def index(self, items: torch.Tensor) -> "TeacherOutputs":
        return TeacherOutputs([v[items] for v in self.logits], [[f[items] for f in fs] for fs in self.layers])

    @staticmethod
    def cat(parts: list["TeacherOutputs"]) -> "TeacherOutputs":
        """One ``TeacherOutputs`` of the batches ``parts``, copied into normal tensors (usable next to autograd)."""
        first = parts[0]
        return TeacherOutputs(
            [torch.cat([p.logits[m] for p in parts]).clone() for m in range(len(first.logits))],
            [[torch.cat([p.layers[m][j] for p in parts]).clone() for j in range(len(first.layers[m]))]
             for m in range(len(first.layers))])


def elements_per_item(shapes: Sequence[Sequence[int]]) -> int:
    """Σ over layers of the elements of one item: shapes without the batch dimension."""
    total = 0
    for shape in shapes:
        count = 1
        for size in shape:
            count *= int(size)
        total += count
    return total


# --------------------------------------------------------------------------- connectors
def connector_spec(method: str, settings, student_shapes: list[list[int]], teacher_shapes: list[list[list[int]]],
                   num_data: int) -> Optional[dict[str, Any]]:
    """What a student's connector is built from (recorded in run.json): FitNets' regressors, one per (teacher,
    layer pair), mapping the student's shape to the teacher's; CRD's heads and banks, one per teacher, with the
    flattened widths of the layers and the transfer-set size. None for the methods without a connector."""
    if method == "fitnets":
        f = settings.fitnets
        return {"kind": "hint_regressors", "pairs": [[[list(s), list(t)] for s, t in zip(student_shapes, shapes)]
                                                     for shapes in teacher_shapes],
                "activation": f.activation, "batch_norm": f.batch_norm}
    if method == "crd":
        c = settings.crd
        if len(student_shapes) != 1:
            raise ConfigError(f"Invalid config: distill.method 'crd' contrasts one layer pair (the embeddings), but "
                              f"distill.student_layers names {len(student_shapes)}; name one layer.")
        return {"kind": "crd", "dims": [[elements_per_item(student_shapes), elements_per_item(shapes)]
                                        for shapes in teacher_shapes],
                "num_data": num_data, "feature_dim": c.feature_dim, "num_negatives": c.negatives,
                "temperature": c.temperature, "momentum": c.momentum, "variant": c.variant}
    return None


def build_connector(spec: dict[str, Any]) -> nn.Module:
    """The (untrained) connector of ``spec``: a ModuleList over teachers, of regressors over layer pairs (FitNets)
    or of one ``CRDLoss`` each (CRD)."""
    if spec.get("kind") == "hint_regressors":
        activation = None if spec["activation"] == "none" else spec["activation"]
        return nn.ModuleList(nn.ModuleList(HintRegressor(s, t, activation, spec["batch_norm"]) for s, t in pairs)
                             for pairs in spec["pairs"])
    if spec.get("kind") == "crd":
        return nn.ModuleList(CRDLoss(s, t, spec["num_data"], spec["feature_dim"], spec["num_negatives"],
                                     spec["temperature"], spec["momentum"], spec["variant"])
                             for s, t in spec["dims"])
    raise ValueError(f"unknown connector {spec!r}")


def bank_bytes(connector: Optional[nn.Module]) -> int:
    """Bytes held by CRD's memory banks in a connector (0 for other connectors)."""
    if connector is None:
        return 0
    return sum(m.bank_bytes() for m in connector.modules() if isinstance(m, CRDLoss))


# --------------------------------------------------------------------------- the terms
def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return values[0] if len(values) == 1 else torch.stack(values).mean()


def layer_term(method: str, settings, student_layers: list[torch.Tensor], teacher: TeacherOutputs,
               connector: Optional[nn.Module], index: Optional[torch.Tensor]) -> torch.Tensor:
    """L_method of a layer method, unweighted: the mean over the teachers of the term against each (see the
    module docstring); ``student_layers`` in the order of the pairs."""
    terms = []
    for m, teacher_layers in enumerate(teacher.layers):
        pairs = list(zip(student_layers, teacher_layers))
        if method == "fitnets":
            reduction = settings.fitnets.reduction
            terms.append(sum(hint_loss(regressor(s), t, reduction) for regressor, (s, t) in zip(connector[m], pairs)))
        elif method == "at":
            terms.append(attention_transfer_loss(student_layers, teacher_layers, settings.at.p, settings.at.squared))
        elif method == "sp":
            terms.append(similarity_preserving_loss(student_layers, teacher_layers))
        elif method == "rkd":
            r = settings.rkd
            terms.append(sum(rkd_loss(s, t, r.distance_weight, r.angle_weight) for s, t in pairs))
        elif method == "pkt":
            terms.append(sum(pkt_loss(s, t, settings.pkt.variant) for s, t in pairs))
        elif method == "crd":
            terms.append(connector[m](student_layers[0], teacher_layers[0], index))
        else:
            raise ValueError(f"{method!r} reads no layers")
    return _mean(terms)


def logit_term(method: str, settings, student_logits: torch.Tensor, teacher: TeacherOutputs, labels: torch.Tensor,
               epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DKD's (ramped in: ``dkd_warmup(epoch)``, epochs counted from 1) or DIST's term, unweighted, and its parts;
    the mean over the teachers."""
    parts: dict[str, list[torch.Tensor]] = {}
    terms = []
    for v in teacher.logits:
        if method == "dkd":
            d = settings.dkd
            loss, tckd, nckd = dkd_terms(student_logits, v, labels, d.alpha, d.beta, d.temperature)
            terms.append(dkd_warmup(epoch, d.warmup_epochs) * loss)
            named = {"tckd": tckd, "nckd": nckd}
        elif method == "dist":
            d = settings.dist
            loss, inter, intra = dist_terms(student_logits, v, d.beta, d.gamma, d.temperature)
            terms.append(loss)
            named = {"inter": inter, "intra": intra}
        else:
            raise ValueError(f"{method!r} is not a logit-relation method")
        for key, value in named.items():
            parts.setdefault(key, []).append(value.detach())
    return _mean(terms), {key: _mean(values) for key, values in parts.items()}
