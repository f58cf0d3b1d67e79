"""The process runtime (meshkit.base.runtime): one log format and destination, one signal shell."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.base.errors import FlagError
from meshkit.base.runtime import LOG_DATEFMT, LOG_FORMAT, Signals, setup_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """setup_logging replaces the root handlers: give pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def test_file_destination_gets_one_handler_in_the_one_format(
    tmp_path: Path, root_handlers: None
) -> None:
    path = tmp_path / "meshkit.log"
    setup_logging("debug", str(path))
    setup_logging("warning", str(path))  # a second call replaces, never doubles, the handler
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert root.level == logging.WARNING
    fmt = root.handlers[0].formatter
    assert fmt is not None and fmt._fmt == LOG_FORMAT and fmt.datefmt == LOG_DATEFMT
    logging.getLogger("meshkit.test").warning("hello")
    assert path.read_text().rstrip().endswith("WARNING meshkit.test: hello")


def test_unknown_level_name_means_info(root_handlers: None) -> None:
    setup_logging("chatty", "stdout")
    assert logging.getLogger().level == logging.INFO


def test_unopenable_file_names_the_flag(tmp_path: Path, root_handlers: None) -> None:
    with pytest.raises(FlagError, match=r"for -log: ") as err:
        setup_logging("info", str(tmp_path / "no" / "such" / "dir.log"), flag="-log")
    assert err.value.flag == "-log"


def test_first_stop_signal_is_graceful_the_second_immediate() -> None:
    again: list[signal.Signals] = []
    reloads: list[int] = []

    async def main() -> signal.Signals:
        loop = asyncio.get_running_loop()
        signals = Signals(loop, on_again=again.append, on_reload=lambda: reloads.append(1))
        signals.install()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            sig = await asyncio.wait_for(signals.stopped(), 5)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.05)
            return sig
        finally:
            signals.remove()

    before = signal.getsignal(signal.SIGTERM)
    assert asyncio.run(main()) == signal.SIGTERM
    assert again == [signal.SIGINT]
    assert reloads == [1]
    assert signal.getsignal(signal.SIGTERM) == before  # removed again
