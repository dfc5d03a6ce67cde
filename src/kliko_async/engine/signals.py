"""Ctrl-C and SIGTERM for commands that run containers: stop cleanly, or at once if asked twice.

The first SIGINT or SIGTERM cancels the work; cancellation reaches each running container's
shielded cleanup, which stops and removes it. A second signal exits immediately, saying exactly
which containers and folders it leaves behind and how they are removed (see ``inflight``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import anyio

from kliko_async.errors import Interrupted, KlikoError
from kliko_async.runtime.inflight import describe_left_behind, left_behind

T = TypeVar("T")

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


async def until_signal(work: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``work``; on SIGINT/SIGTERM cancel it and raise :class:`Interrupted` (130/143).

    Errors meant for people raised by ``work`` come out as themselves, not in a group.
    """
    received: list[signal.Signals] = []
    outcome: list[T] = []
    failure: list[KlikoError] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                number = signal.Signals(signum)
                if received:  # a second signal: stop waiting for the cleanup, say what stays
                    left = describe_left_behind(left_behind())
                    print(f"kliko-async: forced to stop; {left}", file=sys.stderr, flush=True)
                    os._exit(EXIT_CODES.get(number, 130))
                received.append(number)
                print(f"\nkliko-async: stopping: {what} (signal again to force)", file=sys.stderr)
                scope.cancel()

    async with anyio.create_task_group() as group:
        with anyio.CancelScope() as scope:
            group.start_soon(watch, scope)
            try:
                outcome.append(await work())
            except KlikoError as error:
                failure.append(error)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if received:
        # The cleanup gave up on what is still tracked (scancel failed, or Slurm did not
        # answer within the cleanup's deadline): named, not left running unsaid.
        left = left_behind()
        said = f"; {describe_left_behind(left)}" if left else ""
        interrupted = Interrupted(f"interrupted; finished work is kept{said}")
        interrupted.exit_status = EXIT_CODES.get(received[0], 130)
        raise interrupted
    return outcome[0]


async def ended_cleanly_by_sigterm(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; a SIGTERM meanwhile cancels it (its containers are stopped and removed, as
    for Ctrl-C), and then ends the process as SIGTERM would have: by the signal.

    For the synchronous faces (``run_chain``, Luigi's ``KlikoTask``), whose process nobody
    else told what SIGTERM means: Python's default dies at once and leaves the containers
    running, and SIGTERM is how Luigi stops a task (``worker_timeout``, a worker shutting
    down). Only in the main thread (where signals are received) and while SIGTERM has no
    handler of the application's own; a second SIGTERM ends the process without waiting.
    """
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return await work()
    received: list[bool] = []
    outcome: list[T] = []
    failure: list[Exception] = []

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                if received:
                    end_by_sigterm()
                received.append(True)
                scope.cancel()

    try:
        async with anyio.create_task_group() as group:
            with anyio.CancelScope() as scope:
                group.start_soon(watch, scope)
                try:
                    outcome.append(await work())
                except Exception as error:  # raised below as itself, not in a group
                    failure.append(error)
                finally:
                    group.cancel_scope.cancel()
    finally:
        if received:  # also when Ctrl-C came first (Luigi sends SIGTERM after it)
            end_by_sigterm()
    if failure:
        raise failure[0]
    return outcome[0]


def end_by_sigterm() -> NoReturn:
    """End this process by SIGTERM with its default action, as if nobody had caught it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)
    raise SystemExit(EXIT_CODES[signal.SIGTERM])  # not reached: the signal ends the process


def while_main_waits(function: Callable[[], T]) -> T:
    """``function()`` in a daemon thread while the main thread waits for it, so that Ctrl-C is
    answered at once: a huge chain file is composed by libyaml in one C call (seconds at
    100,000 steps), which no signal handler can interrupt in the thread that makes it. The
    command then leaves with ``os._exit`` (:func:`kliko_async.cli.main`), not waiting for it."""
    done = threading.Event()
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as error:  # raised in the main thread, below
            outcome.append((False, error))
        finally:
            done.set()

    threading.Thread(target=work, name="kliko-async-load", daemon=True).start()
    done.wait()  # a signal interrupts the wait (POSIX): KeyboardInterrupt here
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)
