"""An agent that starts again detaches the one-off tasks (`meshkit run`) the network map still
places on its node when nothing runs in their namespace any more (the agent that watched them
stopped before they ended); one held by a `meshkit run` of this agent, or with a process still
inside its namespace, is left alone. The node here is a stand-in: an agent stopping in the
middle of a run is what cannot be arranged cheaply for real (the end-to-end tests cover the
runs themselves)."""

from __future__ import annotations

import asyncio
from typing import Any

from meshkit.cluster.api.runs import RunMethods, _Run


class _Mesh:
    def __init__(self, here: list[str]) -> None:
        self.here = here
        self.polled = 0
        self.detached: list[str] = []

    def runs_here(self) -> list[str] | None:
        self.polled += 1
        return None if self.polled == 1 else self.here  # no map yet, then the map

    def task_detached(self, task_id: str) -> None:
        self.detached.append(task_id)


class _Overlay:
    def __init__(self) -> None:
        self.detached: list[str] = []

    async def detach(self, task_id: str) -> None:
        self.detached.append(task_id)


class _Node:
    node_id = "n" * 25
    stopping = False
    is_manager = False
    state = None

    def __init__(self, here: list[str]) -> None:
        self.mesh = _Mesh(here)
        self.overlay = _Overlay()
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def ask_managers(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        self.asked.append((method, params))
        return {"id": params["id"]}


def test_runs_no_agent_watched_are_detached_once_the_map_is_here() -> None:
    stale, held = "a" * 25, "b" * 25
    node = _Node([stale, held])
    runs = RunMethods(node)  # type: ignore[arg-type]
    runs.runs[held] = _Run(held, f"mk-{held}", rm=False)
    asyncio.run(asyncio.wait_for(runs.reap_loop(), 10))
    assert node.mesh.polled == 2
    assert node.asked == [
        ("network_detach", {"node_id": node.node_id, "id": stale, "exit_code": None, "rm": False})
    ]
    assert node.mesh.detached == [stale] and node.overlay.detached == [stale]
    assert held in runs.runs
