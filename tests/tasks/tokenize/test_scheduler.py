"""How the tokenization driver sizes its actor pool when the Ray cluster shrinks (pure logic; the
real node loss runs in tests/infra/test_faults.py)."""

from __future__ import annotations

from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.scheduler import actor_room, actors_to_drop


def test_room_keeps_one_decode_slot_free() -> None:
    tc = TokenizeConfig(actor_num_cpus=0.5, decode_num_cpus=0.5)
    assert actor_room(2.0, 0.0, tc, gpus_per_actor=0.0) == 3  # two 1-CPU nodes
    assert actor_room(1.0, 0.0, tc, gpus_per_actor=0.0) == 1  # the head alone
    assert actor_room(0.5, 0.0, tc, gpus_per_actor=0.0) == 0
    assert actor_room(16.0, 2.0, tc, gpus_per_actor=1.0) == 2  # GPU actors: one GPU each


def test_actors_of_a_lost_node_go_first() -> None:
    nodes = ["head", "worker", "worker"]
    # Two actors sat on the lost worker node; the head has room for one.
    assert actors_to_drop(nodes, {0, 1, 2}, {"worker"}, room=1) == [1, 2]


def test_actors_on_live_nodes_go_when_they_alone_overfill_the_cluster() -> None:
    # Two actors filled the head; the worker (one actor, the decode slot) left: one head actor goes.
    nodes = ["head", "head", "worker"]
    assert actors_to_drop(nodes, {0, 1, 2}, {"worker"}, room=1) == [1, 2]


def test_nothing_is_dropped_when_the_pool_fits_or_nothing_could_run() -> None:
    nodes = ["head", "worker", "worker"]
    assert actors_to_drop(nodes, {0, 1, 2}, set(), room=3) == []
    assert actors_to_drop(nodes, {0}, {"worker"}, room=1) == []
    assert actors_to_drop(nodes, {0, 1, 2}, {"head", "worker"}, room=0) == []
