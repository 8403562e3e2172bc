"""The ``distill`` section: knowledge distillation (recipe ``distill``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from peerlearn.config.schema import AugmentConfig, DataConfig, Section


class DistillConfig(Section):
    """Knowledge distillation: L = α · CE(student, y) + (1 − α) · T² · KL(q_teacher,T ‖ q_student,T)."""

    teachers: Optional[list[str]] = Field(
        None, description="names of the teacher members (default: the members with trainable: false); "
                          "every other member is a student")
    teacher_epochs: int = Field(
        0, ge=0, description="> 0: first train the teachers this many epochs with CE, then freeze them "
                             "(0: teachers come with `weights`)")
    teacher_augment: Optional[AugmentConfig] = Field(
        None, description="augmentation of the teacher stage (default: data.augment)")
    temperature: float = Field(4.0, gt=0, description="softmax temperature T of the soft targets")
    alpha: float = Field(0.1, ge=0, le=1, description="weight α of the hard-label CE term (0: no labels needed)")
    loss: Literal["kl", "logit_mse"] = Field(
        "kl", description="kl: T²·KL of softened distributions; logit_mse: ½‖z_student − z_teacher‖²")
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
