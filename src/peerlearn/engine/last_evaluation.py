"""The last epoch's evaluation, kept so that the final summary need not score the same members twice.

A run's final summary scores the validation and test splits with the members as they end. The last epoch
has just scored validation (and test, with ``train.eval_test``); when nothing has changed the members since,
scoring them again gives the same numbers at the cost of a whole pass. ``LastEvaluation`` remembers that
evaluation with what it was computed from, and hands it back only when all of these still hold:

- the position is the same: the same stage (object and index) and global step;
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


def _module_state(model: nn.Module) -> list[tuple[str, Any, int]]:
    """(name, tensor, its version) of every parameter and buffer, and the ids of every forward hook."""
    state: list[tuple[str, Any, int]] = []
    for name, tensor in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        state.append((name, tensor, tensor._version))
    for name, module in model.named_modules(remove_duplicate=False):
        hooks = (*module._forward_pre_hooks, *module._forward_hooks)
        if hooks:
            state.append((f"{name}:hooks", hooks, 0))
    return state


def _same(before: list[tuple[str, Any, int]], after: list[tuple[str, Any, int]]) -> bool:
    if len(before) != len(after):
        return False
    for (name_a, held_a, version_a), (name_b, held_b, version_b) in zip(before, after):
        if name_a != name_b or version_a != version_b:
            return False
        if isinstance(held_a, torch.Tensor):
            if held_a is not held_b:
                return False
        elif held_a != held_b:
            return False
    return True


@dataclass
class LastEvaluation:
    """One evaluation (``{split: {member: scores}}``) and the state of the cohort it scored."""

    stage_index: int
    stage: Any
    global_step: int
    results: dict[str, Any]
    models: list[tuple[str, nn.Module, list[tuple[str, Any, int]]]]

    @classmethod
    def take(cls, stage_index: int, stage: Any, global_step: int, results: dict[str, Any],
             members: Iterable) -> "LastEvaluation":
        return cls(stage_index, stage, global_step, copy.deepcopy(results),
                   [(m.name, m.model, _module_state(m.model)) for m in members])

    def reusable(self, stage_index: int, stage: Any, global_step: int, callbacks: Iterable,
                 members: Iterable) -> dict[str, Any]:
        """The remembered results when nothing has changed the members since (see the module), else {}."""
        if (stage_index, global_step) != (self.stage_index, self.global_step) or stage is not self.stage:
            return {}
        if any(getattr(callback, "may_change_members", True) for callback in callbacks):
            return {}
        members = list(members)
        if len(members) != len(self.models):
            return {}
        for member, (name, model, state) in zip(members, self.models):
            if member.name != name or member.model is not model or not _same(state, _module_state(member.model)):
                return {}
        return copy.deepcopy(self.results)
