"""The last epoch's evaluation, kept so that the final summary need not score the same members twice.

A run's final summary scores the validation and test splits with the members as they end. The last epoch
has just scored validation (and test, with ``train.eval_test``); when nothing has changed the members since,
scoring them again gives the same numbers at the cost of a whole pass. ``LastEvaluation`` remembers that
evaluation with what it was computed from, and hands it back only when all of these still hold:

- the position is the same: the same stage and global step;
- no callback may have changed a member: each declares ``Callback.may_change_members = False`` (early
  stopping restores weights and a fitted class bias adds to the logits, so they keep the default, True);
- every member is the same module holding the same parameter and buffer tensors, none written to since
  (``Tensor._version`` counts in-place writes: an optimizer step, ``copy_``, ``load_state_dict``), with the
  same forward hooks.

Anything else evaluates again. The snapshot holds the tensors themselves, so a replaced tensor can never be
mistaken for its successor at a reused address.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn


def _module_state(model: nn.Module) -> tuple[list[torch.Tensor], tuple]:
    """The model's parameters and buffers, and a key of what it computes from: (name, id, version) of each of
    them and (name, hook ids) of every submodule with forward hooks. Whoever keeps the key keeps the tensors
    too, so an id in it cannot pass to another tensor."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    tensors = [tensor for _, tensor in named]
    hooks = [(name, (*module._forward_pre_hooks, *module._forward_hooks))
             for name, module in model.named_modules(remove_duplicate=False)]
    key = (tuple((name, id(tensor), tensor._version) for name, tensor in named),
           tuple((name, ids) for name, ids in hooks if ids))
    return tensors, key


@dataclass
class LastEvaluation:
    """One evaluation (``{split: {member: scores}}``) and the state of the cohort it scored."""

    stage: Any
    global_step: int
    results: dict[str, Any]
    models: list[tuple[str, nn.Module, list[torch.Tensor], tuple]]

    @classmethod
    def take(cls, stage: Any, global_step: int, results: dict[str, Any], members: Iterable) -> "LastEvaluation":
        return cls(stage, global_step, copy.deepcopy(results),
                   [(m.name, m.model, *_module_state(m.model)) for m in members])

    def reusable(self, stage: Any, global_step: int, callbacks: Iterable, members: Iterable) -> dict[str, Any]:
        """The remembered results when nothing has changed the members since (see the module), else {}."""
        if stage is not self.stage or global_step != self.global_step:
            return {}
        if any(getattr(callback, "may_change_members", True) for callback in callbacks):
            return {}
        now = [(m.name, m.model, _module_state(m.model)[1]) for m in members]
        if now != [(name, model, key) for name, model, _, key in self.models]:
            return {}
        return copy.deepcopy(self.results)
