"""The shape of a saga: its stages, and the branches of a parallel group.

A saga is a sequence of stages. A stage is one step, or a parallel group whose members
(branches) each are one step or a chain of steps. Steps are numbered in plan order:
stage by stage, the branches of a group in member order, a branch's steps in order.
The stored plan says it per step: ``stage``, and ``branch`` for a group member (a plan
stored before groups existed has neither group nor ``branch``: one step per stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stage", "Topology"]


@dataclass(frozen=True)
class Stage:
    """One stage: a step (one branch of one step) or a group of branches."""

    number: int
    branches: tuple[tuple[int, ...], ...]
    group: bool = False
    #: A ``wait_for`` (``signal``, ``timeout``, ``on_timeout``) or a sleep (``sleep``
    #: seconds, or ``until`` epoch seconds): the stage waits instead of running a body.
    wait: Mapping[str, Any] | None = None
    #: A child saga's stored plan: the stage runs that saga and waits for its end.
    child: Mapping[str, Any] | None = None

    @property
    def holds(self) -> bool:
        """Whether the saga waits at this stage (for a signal, a time or a child saga)."""
        return self.wait is not None or self.child is not None

    @property
    def ends(self) -> tuple[int, ...]:
        """The last step of each branch, in member order: what the stage's join waits for."""
        return tuple(branch[-1] for branch in self.branches)

    @property
    def steps(self) -> tuple[int, ...]:
        """Every step of the stage, in plan order."""
        return tuple(index for branch in self.branches for index in branch)


@dataclass(frozen=True)
class Topology:
    """The stages of a plan, and where each step stands in them."""

    stages: tuple[Stage, ...]
    fail_fast: bool = False
    _stage_of: Mapping[int, int] = field(default_factory=dict, repr=False, compare=False)
    _branch_of: Mapping[int, tuple[int, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def of(cls, plan: Mapping[str, Any]) -> Topology:
        """The topology of a stored plan (any plan version)."""
        return cls.of_steps(plan["steps"], bool(plan.get("fail_fast")))

    @classmethod
    def of_steps(cls, steps: Sequence[Mapping[str, Any]], fail_fast: bool = False) -> Topology:
        """The topology of a plan's steps (each with ``index``, ``stage``, maybe ``branch``)."""
        grouped: dict[int, dict[int, list[int]]] = {}
        is_group: dict[int, bool] = {}
        waits: dict[int, Mapping[str, Any]] = {}
        children: dict[int, Mapping[str, Any]] = {}
        for step in steps:
            stage = step.get("stage", step["index"])
            branch = step.get("branch")
            is_group[stage] = branch is not None
            if step.get("wait") is not None:
                waits[stage] = step["wait"]
            if step.get("child") is not None:
                children[stage] = step["child"]
            grouped.setdefault(stage, {}).setdefault(0 if branch is None else branch, []).append(
                step["index"]
            )
        stages = tuple(
            Stage(
                number,
                tuple(tuple(b) for _, b in sorted(branches.items())),
                is_group[number],
                waits.get(number),
                children.get(number),
            )
            for number, branches in sorted(grouped.items())
        )
        stage_of = {i: position for position, s in enumerate(stages) for i in s.steps}
        branch_of = {i: branch for s in stages for branch in s.branches for i in branch}
        return cls(stages, fail_fast, stage_of, branch_of)

    @property
    def grouped(self) -> bool:
        """Whether the saga has a parallel group (else it is a straight line of steps)."""
        return any(stage.group for stage in self.stages)

    @property
    def count(self) -> int:
        """How many steps the saga has."""
        return len(self._stage_of)

    def stage_of(self, index: int) -> Stage:
        """The stage step ``index`` belongs to."""
        return self.stages[self._stage_of[index]]

    def position(self, index: int) -> int:
        """The position of step ``index``'s stage in :attr:`stages`."""
        return self._stage_of[index]

    def next_stage(self, index: int) -> Stage | None:
        """The stage after step ``index``'s stage (None: it is the last)."""
        position = self._stage_of[index] + 1
        return self.stages[position] if position < len(self.stages) else None

    def is_final(self, index: int) -> bool:
        """Whether step ``index`` is in the saga's last stage."""
        return self._stage_of[index] == len(self.stages) - 1

    def run_from(self, start: int) -> tuple[int, ...]:
        """The steps that travel as one chain from ``start``.

        In a group: the rest of ``start``'s branch. Else: ``start`` and the steps after
        it up to the next group, or up to and with the next wait or child saga (the whole
        rest, in a saga of steps only).
        """
        stage = self.stage_of(start)
        if stage.group:
            branch = self._branch_of[start]
            return branch[branch.index(start) :]
        run = [start]
        if stage.holds:
            return tuple(run)
        for later in self.stages[self._stage_of[start] + 1 :]:
            if later.group:
                break
            run.extend(later.steps)
            if later.holds:
                break
        return tuple(run)

    @property
    def waits(self) -> tuple[tuple[int, Mapping[str, Any]], ...]:
        """The saga's wait and sleep steps, in plan order, with what each waits for."""
        return tuple((s.steps[0], s.wait) for s in self.stages if s.wait is not None)

    @property
    def children(self) -> tuple[tuple[int, Mapping[str, Any]], ...]:
        """The saga's child saga steps, in plan order, with each child's plan."""
        return tuple((s.steps[0], s.child) for s in self.stages if s.child is not None)

    def joins(self, index: int) -> bool:
        """Whether step ``index``'s success is a join.

        It is when the step ends a branch of a group, or comes just before a group (so
        that its success sends the group's members).
        """
        stage = self.stage_of(index)
        if stage.group:
            return index in stage.ends
        following = self.next_stage(index)
        return following is not None and following.group

    def feeds(self, index: int) -> int | tuple[int, ...] | None:
        """What a mutable step ``index`` gets as its first argument.

        A step index (that step's result), a tuple of a group's branch ends (the list
        of their results, in member order), or None (the saga's first stage).
        """
        branch = self._branch_of[index]
        if branch[0] != index:
            return branch[branch.index(index) - 1]
        position = self._stage_of[index]
        if position == 0:
            return None
        before = self.stages[position - 1]
        return before.ends if before.group else before.ends[0]

    def output(self, results: Mapping[int, Any]) -> Any:
        """The saga's result: its last step's, or the list of its final group's."""
        last = self.stages[-1]
        if last.group:
            return [results.get(index) for index in last.ends]
        return results.get(last.ends[0])

    def undo_batch(self, undo: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """The compensation chains to send now, of the steps ``undo`` (newest first).

        Stages are undone in reverse order, one group at a time: the branches of the
        newest group with something to undo, each a chain of its own (its steps in
        reverse), sent together; or the straight run of single steps down to the next
        group (or to and with the next child saga), as one chain. The last compensation
        of each chain settles the saga, which then sends the next batch.
        """
        if not self.grouped:
            return (self._to_child(undo),) if undo else ()
        todo = set(undo)
        run: list[int] = []
        for stage in reversed(self.stages):
            mine = [i for i in reversed(stage.steps) if i in todo]
            if not mine:
                continue
            if not stage.group:
                run.extend(mine)
                continue
            if run:
                break
            return tuple(
                tuple(i for i in reversed(branch) if i in todo)
                for branch in stage.branches
                if todo.intersection(branch)
            )
        return (self._to_child(run),) if run else ()

    def _to_child(self, chain: Sequence[int]) -> tuple[int, ...]:
        """The chain up to and with its first child saga.

        A child's undo ends its chain: the child undoes itself, then settles its parent.
        """
        for position, index in enumerate(chain):
            if self.stage_of(index).child is not None:
                return tuple(chain[: position + 1])
        return tuple(chain)
