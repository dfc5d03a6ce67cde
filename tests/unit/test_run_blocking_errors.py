"""``run_blocking`` (under ``run_chain`` and the Luigi adapter) hands back what the work raised
as itself, as a caller's ``except`` expects, never wrapped in an exception group."""

from __future__ import annotations

import signal
import threading

import pytest

from kliko_async import api
from kliko_async.errors import ImageError


def test_an_error_of_the_work_comes_out_as_itself() -> None:
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # SIGTERM is watched meanwhile

    async def work() -> None:
        raise ImageError("no such image", where="example/none")

    with pytest.raises(ImageError, match="no such image") as error:
        api.run_blocking(work)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # Not raised while handling the look for a running loop: a traceback said "RuntimeError:
    # no running event loop ... During handling of the above exception" before every error.
    assert not isinstance(error.value.__context__, RuntimeError)
