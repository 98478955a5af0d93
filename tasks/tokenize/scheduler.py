"""The Ray side of tokenization: size and start the actor pool, run read -> decode -> encode.

Data flow per shard: one read task splits the shard's clips into batches (one object per batch);
one decode task per batch (CPU) turns them into a float32 array; a tokenizer actor encodes it.
The driver keeps a bounded number of batches ahead of the actors and hands each whole shard,
its batches in order, to a callback: only the driver publishes, so output is exactly once.

A batch whose actor died is retried by Ray on the restarted actor; when Ray gives up, the driver
retires that actor and resubmits the batch elsewhere. The batch's slot is filled once, whoever
encodes it. When a node leaves the cluster, its actors restart elsewhere only if there is room:
the driver shrinks the pool to what the remaining nodes hold (keeping a decode slot free), so
restarting actors never wait forever for CPUs, and a run that makes no progress for
`tokenize.stall_timeout_s` stops with an error instead of hanging.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasks import storage
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.output import ShardPlan
from tasks.tokenize.workers import EncodedBatch, TokenizerWorker, decode_batch, read_shard, warm_up

log = logging.getLogger("arvid.tokenize")

# Encode calls queued per actor: one running, one waiting, so an actor never idles between batches.
CALLS_PER_ACTOR = 2
# How often the driver looks at the cluster (lost nodes, stalls) while it waits for results.
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class ActorLayout:
    """How many tokenizer actors, the GPUs each holds, and the device they encode on."""

    actors: int
    gpus_per_actor: float
    device: str


@dataclass
class ActorPool:
    """Tokenizer actors, their queue depths, and which are still alive."""

    actors: list[Any]
    device: str
    files_ref: Any  # held for the run: a restarting actor reads its weights from it again
    load: list[int]
    alive: set[int]
    nodes: list[str] = field(default_factory=list)  # the Ray node each actor started on
    gpus_per_actor: float = 0.0
    dropped: set[int] = field(default_factory=set)  # killed by the driver to fit a smaller cluster

    def pick(self, avoid: frozenset[int] = frozenset()) -> int | None:
        """The live actor with the shortest queue, if it has room for another call.

        Actors in `avoid` (those a batch already failed on) are chosen only if no other lives.
        """
        candidates = (self.alive - avoid) or self.alive
        if not candidates:
            return None
        best = min(candidates, key=lambda i: self.load[i])
        return best if self.load[best] < CALLS_PER_ACTOR else None

    def retire(self, actor: int) -> None:
        """Stop an actor that Ray could not bring back in time, for good: a restart later would
        hold CPUs (or a GPU) that no batch is ever sent to."""
        import ray

        if actor in self.alive:
            ray.kill(self.actors[actor], no_restart=True)
        self.alive.discard(actor)

    def drop(self, actor: int) -> None:
        """Stop a live actor to fit a smaller cluster (its queued calls fail and move on)."""
        self.dropped.add(actor)
        self.retire(actor)

    def kill(self) -> None:
        """Stop every actor of the pool."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


@dataclass
class PipelineStats:
    """What the pipeline did: actor time spent encoding and batches resubmitted after a death."""

    busy_seconds: float = 0.0
    retries: int = 0


@dataclass
class _Batch:
    """One batch in flight: where it comes from, its decoded object, and the actors it was lost on."""

    plan: ShardPlan
    index: int
    decoded: Any = None  # Ray ref of the DecodedBatch
    lost: int = 0
    lost_on: frozenset[int] = field(default_factory=frozenset)
    actor: int = -1  # the actor encoding it now

    def name(self) -> str:
        return f"{self.plan.uri}: batch {self.index} ({', '.join(self.plan.batches[self.index])})"


def actor_room(cpus: float, gpus: float, tc: TokenizeConfig, gpus_per_actor: float) -> int:
    """How many actors fit in `cpus`/`gpus` with one decode task's CPUs kept free."""
    room = int((cpus - tc.decode_num_cpus) / tc.actor_num_cpus + 1e-9)
    if gpus_per_actor > 0:
        room = min(room, int(gpus / gpus_per_actor + 1e-9))
    return max(0, room)


def actor_layout(tc: TokenizeConfig) -> ActorLayout:
    """The actor layout for this cluster; refuses sizes that could never progress."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    use_gpu = tc.device == "cuda" or (tc.device == "auto" and gpus >= 1)
    if use_gpu:
        if gpus < 1:
            raise ValueError("tokenize.device=cuda: the Ray cluster has no GPU")
        count = tc.num_actors or int(gpus)
        if count > gpus:
            raise ValueError(
                f"tokenize.num_actors={count}: the Ray cluster has {gpus:g} GPUs (one per actor)"
            )
    else:
        count = tc.num_actors or max(1, min(int(cpus), actor_room(cpus, gpus, tc, 0.0)))
    needed = count * tc.actor_num_cpus + tc.decode_num_cpus
    if needed > cpus + 1e-9:
        raise ValueError(
            f"{count} tokenizer actors x {tc.actor_num_cpus:g} CPUs + {tc.decode_num_cpus:g} CPUs "
            f"for one decode task need {needed:g} CPUs; the Ray cluster has {cpus:g}: decoding "
            "would wait forever — lower tokenize.num_actors or tokenize.actor_num_cpus"
        )
    return ActorLayout(count, 1.0 if use_gpu else 0.0, "cuda" if use_gpu else "cpu")


def actors_to_drop(
    pool_nodes: list[str], alive: set[int], dead_nodes: set[str], room: int
) -> list[int]:
    """The live actors to kill so that at most `room` remain: first those whose node is gone
    (they are restarting, or restarted into the slots decoding needs), then the newest."""
    excess = len(alive) - room
    if excess <= 0 or room < 1:
        return []  # nothing to shed, or nothing could run anyway: the stall deadline decides
    order = sorted(alive, key=lambda i: (pool_nodes[i] not in dead_nodes, -i))
    return sorted(order[:excess])


def live_resources() -> tuple[float, float, set[str]]:
    """CPUs and GPUs of the live Ray nodes, and the ids of the nodes that left."""
    import ray

    cpus = gpus = 0.0
    dead: set[str] = set()
    for node in ray.nodes():
        if node.get("Alive"):
            cpus += float(node.get("Resources", {}).get("CPU", 0.0))
            gpus += float(node.get("Resources", {}).get("GPU", 0.0))
        else:
            dead.add(node["NodeID"])
    return cpus, gpus, dead


def start_actors(
    tc: TokenizeConfig,
    layout: ActorLayout,
    files: dict[str, bytes],
    runtime_env: dict[str, Any],
    worker: type[TokenizerWorker] = TokenizerWorker,
) -> ActorPool:
    """Start `layout.actors` actors of `worker` holding the tokenizer, and warm decode workers."""
    import ray

    files_ref = ray.put(files)  # shipped once, however many actors and restarts
    remote = ray.remote(worker).options(
        num_cpus=tc.actor_num_cpus,
        num_gpus=layout.gpus_per_actor,
        max_restarts=tc.max_retries,
        # Ray retries a lost call once the actor is back (a call sent to a restarting actor
        # fails at once otherwise); the driver resubmits elsewhere only when Ray gives up.
        max_task_retries=tc.max_retries,
        runtime_env=runtime_env,
    )
    threads = max(1, int(tc.actor_num_cpus))
    actors = [remote.remote(files_ref, layout.device, threads) for _ in range(layout.actors)]
    # Decode workers start (Python, torch, PyAV imports) while the actors load the tokenizer,
    # so the pipeline starts warm on both sides and throughput excludes both start-ups.
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    slots = int((cpus - layout.actors * tc.actor_num_cpus) / tc.decode_num_cpus + 1e-9)
    warm = ray.remote(warm_up).options(num_cpus=tc.decode_num_cpus, runtime_env=runtime_env)
    pending = [
        warm.remote() for _ in range(max(1, min(slots, CALLS_PER_ACTOR * layout.actors + 2)))
    ]
    try:
        started = ray.get(
            [actor.ready.remote() for actor in actors] + pending, timeout=tc.start_timeout_s
        )
    except ray.exceptions.GetTimeoutError as exc:
        for actor in actors:
            ray.kill(actor)
        raise RuntimeError(
            f"{layout.actors} tokenizer actors and their decode workers did not start within "
            f"tokenize.start_timeout_s={tc.start_timeout_s:g} s; the Ray cluster has "
            f"{ray.cluster_resources()} — check that its nodes are up"
        ) from exc
    count = layout.actors
    nodes = [info["node"] for info in started[:count]]
    return ActorPool(
        actors,
        layout.device,
        files_ref,
        [0] * count,
        set(range(count)),
        nodes,
        gpus_per_actor=layout.gpus_per_actor,
    )


def fit_pool_to_cluster(pool: ActorPool, tc: TokenizeConfig) -> None:
    """Shrink the pool when nodes left: restarting actors must not take the CPUs decoding needs."""
    cpus, gpus, dead = live_resources()
    room = actor_room(cpus, gpus, tc, pool.gpus_per_actor)
    drop = actors_to_drop(pool.nodes, pool.alive, dead, room)
    if not drop:
        return
    log.warning(
        "the Ray cluster shrank to %g CPUs / %g GPUs: %d of %d tokenizer actors go on (actors %s "
        "stopped; their batches move to the others)",
        cpus,
        gpus,
        room,
        len(pool.alive),
        drop,
    )
    for actor in drop:
        pool.drop(actor)


def run_pipeline(
    plans: list[ShardPlan],
    pool: ActorPool,
    tc: TokenizeConfig,
    storage_settings: storage.StorageSettings,
    runtime_env: dict[str, Any],
    on_batch: Callable[[EncodedBatch], None],
    on_shard: Callable[[ShardPlan, list[EncodedBatch]], None],
) -> PipelineStats:
    """Read -> decode (CPU tasks) -> encode (actors) every planned batch; hand each whole shard to on_shard."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    options = {
        "num_cpus": tc.decode_num_cpus,
        "max_retries": tc.max_retries,
        "runtime_env": runtime_env,
    }
    reader, decoder = ray.remote(read_shard), ray.remote(decode_batch).options(**options)
    todo = deque(_Batch(plan, index) for plan in plans for index in range(len(plan.batches)))
    read_refs: dict[str, list[Any]] = {}
    decoding: dict[Any, _Batch] = {}
    ready: deque[_Batch] = deque()
    encoding: dict[Any, _Batch] = {}
    results: dict[str, dict[int, EncodedBatch]] = {plan.source_shard: {} for plan in plans}
    # Decoded batches kept ahead of the actors: enough that none waits, few enough to bound memory.
    ahead = CALLS_PER_ACTOR * len(pool.actors) + 2
    stats = PipelineStats()
    last_progress = last_check = time.monotonic()
    while todo or decoding or ready or encoding:
        while todo and len(decoding) + len(ready) < ahead:
            batch = todo.popleft()
            plan = batch.plan
            if plan.source_shard not in read_refs:
                count = len(plan.batches)
                refs = reader.options(**options, num_returns=count).remote(
                    plan.uri, plan.batches, storage_settings
                )
                read_refs[plan.source_shard] = [refs] if count == 1 else list(refs)
            ref = decoder.remote(
                read_refs[plan.source_shard][batch.index], tc.resolution, tc.frames
            )
            decoding[ref] = batch
        while ready:
            choice = pool.pick(ready[0].lost_on)
            if choice is None:
                break
            batch = ready.popleft()
            batch.actor = choice
            encoding[pool.actors[choice].encode.remote(batch.decoded)] = batch
            pool.load[choice] += 1
        if not pool.alive:
            raise RuntimeError(
                f"all {len(pool.actors)} tokenizer actors died; completed shards are kept — re-run to resume"
            )
        # fetch_local=False: decoded frames go from decode task to actor, never to the driver.
        done, _ = ray.wait(
            [*decoding, *encoding], num_returns=1, fetch_local=False, timeout=POLL_SECONDS
        )
        now = time.monotonic()
        if done:
            last_progress = now
        elif now - last_progress > tc.stall_timeout_s:
            cpus, gpus, _ = live_resources()
            raise RuntimeError(
                f"tokenization stalled: no batch finished in {tc.stall_timeout_s:g} s "
                f"(tokenize.stall_timeout_s) with {len(pool.alive)} tokenizer actors on a Ray "
                f"cluster of {cpus:g} CPUs / {gpus:g} GPUs; completed shards are kept — re-run "
                "to resume once the cluster has room"
            )
        if now - last_check >= POLL_SECONDS:
            last_check = now
            fit_pool_to_cluster(pool, tc)
        for ref in done:
            if ref in decoding:
                batch = decoding.pop(ref)
                batch.decoded = ref
                ready.append(batch)
                continue
            batch = encoding.pop(ref)
            pool.load[batch.actor] -= 1
            try:
                encoded: EncodedBatch = ray.get(ref)
            except RayTaskError as exc:
                # Decoding or encoding raised (a bad clip, a tokenizer bug): retrying won't help.
                raise RuntimeError(
                    f"{batch.name()} failed: {exc.cause!r}; completed shards are kept — "
                    "re-run after fixing it"
                ) from exc
            except RayActorError as exc:
                # Ray's restarts and retries on this actor ran out, or the driver dropped it to
                # fit a smaller cluster: retire it and resubmit to another live actor.
                pool.retire(batch.actor)
                if batch.actor in pool.dropped:
                    log.info("%s batch %d: moved off a dropped actor", batch.plan.uri, batch.index)
                    ready.appendleft(batch)
                    continue
                if batch.lost + 1 > tc.max_retries:
                    raise RuntimeError(
                        f"{batch.plan.uri}: batch {batch.index} lost its actor {batch.lost + 1} "
                        f"times ({exc}); completed shards are kept — re-run to resume"
                    ) from exc
                log.warning(
                    "%s batch %d: actor died, resubmitting (%s)", batch.plan.uri, batch.index, exc
                )
                stats.retries += 1
                batch.lost += 1
                batch.lost_on = batch.lost_on | {batch.actor}
                ready.appendleft(batch)
                continue
            plan = batch.plan
            results[plan.source_shard][batch.index] = encoded
            stats.busy_seconds += encoded.encode_seconds
            on_batch(encoded)
            if len(results[plan.source_shard]) == len(plan.batches):
                shard_results = results.pop(plan.source_shard)
                read_refs.pop(plan.source_shard, None)
                on_shard(plan, [shard_results[i] for i in range(len(plan.batches))])
    return stats
