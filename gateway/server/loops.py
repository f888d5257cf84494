"""The event loop the gateway's front ends run on: uvloop (libuv) where it is installed, else asyncio's own.

grpc.aio drives its calls through the running loop (a poller thread wakes it; each call is a task and a
few futures), so the loop's own cost is a share of every call: `sealgate bench serve` measured 5-6% less CPU
per call on uvloop than on asyncio's loop for the same gateway. `[server] event_loop` picks it, as uvicorn's
`--loop` does: "auto" (uvloop when importable), "uvloop" (required), "asyncio".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.errors import ConfigError

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The constructor of the loop `kind` names; ConfigError for an unknown kind or a missing uvloop."""
    if kind not in EVENT_LOOPS:
        raise ConfigError(f"[server] event_loop must be one of {', '.join(EVENT_LOOPS)}")
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError("[server] event_loop = 'uvloop' but uvloop is not installed") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """'uvloop' or 'asyncio', for the start-up log and health details."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """asyncio.run on the loop `kind` names."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
