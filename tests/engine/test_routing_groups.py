"""Groups through the real app (llama-swap.md §1.6, §3.5): which models run
after each request, for every flag combination, parallel and queued loads,
and the fifo priority of queued requests."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import fake_cmd, wait_until
from tests.harness import RUNNING_STATES, App, Apps, StateLog


def models(*ids: str, flags: tuple[str, ...] = ()) -> str:
    lines = ["models:"]
    for mid in ids:
        lines += [f"  {mid}:", f"    cmd: {fake_cmd(mid, *flags)}"]
    return "\n".join(lines) + "\n"


async def steps(app: App, plan: list[tuple[str, list[str]]]) -> None:
    """Request each model in turn; after each, exactly ``expected`` runs."""
    for model, expected in plan:
        assert await app.reply(model) == f"hello from {model}"
        assert app.running() == expected, f"after a request for {model}"
        assert app.ready() == expected  # nothing left half-stopped


async def running_via_api(app: App) -> list[str]:
    r = await app.client.get("/running")
    return [m["model"] for m in (await r.json())["running"]]


async def test_implicit_default_group_runs_one_model_at_a_time(apps: Apps) -> None:
    app = await apps.start(models("a", "b", "c"))
    await steps(app, [("a", ["a"]), ("b", ["b"]), ("c", ["c"]), ("a", ["a"])])
    assert await running_via_api(app) == ["a"]


async def test_swap_true_exclusive_true_group(apps: Apps) -> None:
    app = await apps.start(
        models("a", "b", "c", "d")
        + """
routing:
  router:
    settings:
      groups:
        llms: {swap: true, exclusive: true, members: [a, b]}
"""
    )
    await steps(
        app,
        [
            ("a", ["a"]),
            ("b", ["b"]),  # same group, swap: one member at a time
            ("c", ["c"]),  # (default) is exclusive: llms is unloaded
            ("d", ["d"]),  # (default) swaps too
            ("a", ["a"]),  # llms is exclusive: (default) is unloaded
        ],
    )


async def test_swap_false_group_members_run_together(apps: Apps) -> None:
    app = await apps.start(
        models("a", "b", "c")
        + """
routing:
  router:
    settings:
      groups:
        pair: {swap: false, members: [a, b]}
"""
    )
    a_pid = None
    await steps(app, [("a", ["a"])])
    a_pid = app.pid("a")
    await steps(app, [("b", ["a", "b"])])
    assert app.pid("a") == a_pid  # not restarted
    await steps(app, [("c", ["c"]), ("b", ["b"]), ("a", ["a", "b"])])
    assert await running_via_api(app) == ["a", "b"]


async def test_swap_false_exclusive_false_group_leaves_others_alone(
    apps: Apps,
) -> None:
    app = await apps.start(
        models("a", "b", "x", "y")
        + """
routing:
  router:
    settings:
      groups:
        tools: {swap: false, exclusive: false, members: [x, y]}
"""
    )
    await steps(
        app,
        [
            ("a", ["a"]),
            ("x", ["a", "x"]),
            ("y", ["a", "x", "y"]),
            ("b", ["b"]),  # (default) is exclusive: tools go, and a swaps out
        ],
    )


async def test_non_exclusive_group_never_unloads_other_groups(apps: Apps) -> None:
    """llama-swap's compat gotcha: loading a member of a non-exclusive group
    never unloads anything in other groups, even exclusive ones."""
    app = await apps.start(
        models("a", "b", "c", "x", "y")
        + """
routing:
  router:
    settings:
      groups:
        main: {swap: true, exclusive: true, members: [a, b]}
        side: {swap: true, exclusive: false, members: [x, y]}
"""
    )
    await steps(
        app,
        [
            ("a", ["a"]),
            ("x", ["a", "x"]),  # a (exclusive group) stays
            ("y", ["a", "y"]),  # side swaps within itself only
            ("b", ["b"]),  # main is exclusive: side goes, a swaps out
            ("y", ["b", "y"]),
            ("c", ["c"]),  # (default) is exclusive
            ("x", ["c", "x"]),  # ... yet it is not protected from side
            # Requesting a running member of an exclusive group applies its
            # rule again: the non-persistent side model goes.
            ("c", ["c"]),
        ],
    )


async def test_persistent_groups_are_never_evicted_by_others(apps: Apps) -> None:
    app = await apps.start(
        models("a", "b", "c", "e", "p")
        + """
routing:
  router:
    settings:
      groups:
        always: {swap: false, exclusive: false, persistent: true, members: [e]}
        vip: {persistent: true, members: [p]}
        llms: {members: [a, b]}
"""
    )
    await steps(app, [("e", ["e"])])
    e_pid = app.pid("e")
    await steps(
        app,
        [
            ("a", ["a", "e"]),  # llms is exclusive, but e is persistent
            ("b", ["b", "e"]),
            ("c", ["c", "e"]),
            ("p", ["e", "p"]),  # vip is exclusive and persistent itself
            ("a", ["a", "e", "p"]),  # neither persistent group is touched
        ],
    )
    assert app.pid("e") == e_pid  # never restarted


async def test_legacy_top_level_groups(apps: Apps) -> None:
    app = await apps.start(
        models("a", "b", "c")
        + """
groups:
  pair: {swap: false, exclusive: true, members: [a, b]}
"""
    )
    await steps(app, [("a", ["a"]), ("b", ["a", "b"]), ("c", ["c"])])


@pytest.mark.parametrize(
    "groups",
    [
        "pool: {swap: false, members: [a, b]}",
        "ga: {exclusive: false, members: [a]}\n        gb: {exclusive: false, members: [b]}",
    ],
    ids=["one-swap-false-group", "two-non-exclusive-groups"],
)
async def test_models_that_may_coexist_start_in_parallel(
    apps: Apps, groups: str
) -> None:
    app = await apps.start(
        models("a", "b", flags=("--health-delay", "0.5"))
        + f"""
routing:
  router:
    settings:
      groups:
        {groups}
"""
    )
    log = StateLog.attach(app.router)
    replies = await asyncio.gather(app.reply("a"), app.reply("b"))
    assert list(replies) == ["hello from a", "hello from b"]
    # Both were starting at the same time: the two loads overlapped.
    assert log.max_together(frozenset({"starting"})) == (2, {"a", "b"})
    assert app.running() == ["a", "b"]


async def test_conflicting_loads_queue_and_never_overlap(apps: Apps) -> None:
    app = await apps.start(models("a", "b", flags=("--health-delay", "0.3")))
    log = StateLog.attach(app.router)
    first = asyncio.create_task(app.reply("a"))
    await wait_until(lambda: app.state("a") == "starting")
    second = asyncio.create_task(app.reply("b"))
    # b waits in the queue while a loads; it does not start a second load.
    await wait_until(lambda: [t.model for t in app.router.scheduler.queued()] == ["b"])
    assert app.state("b") == "stopped"
    replies = await asyncio.gather(first, second)
    assert list(replies) == ["hello from a", "hello from b"]
    assert log.entered("starting") == ["a", "b"]
    count, _ = log.max_together(RUNNING_STATES)
    assert count == 1  # a and b never ran together, not even while swapping
    assert app.running() == ["b"]


async def test_fifo_priority_serves_higher_priority_first(apps: Apps) -> None:
    app = await apps.start(
        models("a", "b", "c")
        + """
routing:
  scheduler:
    use: fifo
    settings:
      fifo:
        priority: {c: 10}
"""
    )
    await app.reply("a")
    busy = asyncio.create_task(app.reply("a", fake_delay=1.0))
    await wait_until(lambda: app.upstream("a").in_flight == 1)
    log = StateLog.attach(app.router)
    done: list[str] = []

    async def ask(model: str) -> None:
        assert await app.reply(model) == f"hello from {model}"
        done.append(model)

    low = asyncio.create_task(ask("b"))  # priority 0, arrives first
    await wait_until(lambda: len(app.router.scheduler.queued()) == 1)
    high = asyncio.create_task(ask("c"))  # priority 10, arrives second
    await wait_until(lambda: len(app.router.scheduler.queued()) == 2)
    assert [t.model for t in app.router.scheduler.queued()] == ["c", "b"]
    assert app.running() == ["a"]  # a is not evicted mid-request
    await asyncio.gather(busy, low, high)
    assert done == ["c", "b"]
    assert log.entered("starting") == ["c", "b"]
    assert app.running() == ["b"]
