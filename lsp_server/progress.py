"""Work-done progress ($/progress) and user messages, safe to call from the inference thread."""

from __future__ import annotations

import asyncio
import logging
import uuid

from lsprotocol import types

log = logging.getLogger(__name__)


class Progress:
    """One server-initiated work-done progress; a no-op when the client does not support it."""

    def __init__(self, ls, title: str) -> None:
        self.ls = ls
        self.title = title
        self.token: str | None = None
        self.loop = asyncio.get_running_loop()

    async def begin(self, message: str = "") -> Progress:
        caps = self.ls.client_capabilities
        if caps is None or caps.window is None or not caps.window.work_done_progress:
            return self
        token = f"codegen/{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.ls.work_done_progress.create_async(token), timeout=5)
        except Exception as e:  # the client refused or never answered: go on without progress
            log.info("work done progress not created: %s", e)
            return self
        self.token = token
        self.ls.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title=self.title, message=message or None, percentage=0)
        )
        return self

    def report(self, message: str, percentage: int | None = None) -> None:
        """Report from any thread."""
        if self.token is None:
            return
        value = types.WorkDoneProgressReport(message=message, percentage=percentage)
        self.loop.call_soon_threadsafe(self.ls.work_done_progress.report, self.token, value)

    def end(self, message: str = "") -> None:
        if self.token is None:
            return
        token, self.token = self.token, None
        self.ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message or None))


def show(ls, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
    """window/showMessage (an error or warning the user must see), also logged."""
    log.log(40 if kind == types.MessageType.Error else 30, "%s", message)
    ls.window_show_message(types.ShowMessageParams(type=kind, message=message))


def log_to_client(ls, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
    """window/logMessage (everything else), also logged to stderr."""
    log.log({1: 40, 2: 30, 3: 20}.get(int(kind), 10), "%s", message)
    ls.window_log_message(types.LogMessageParams(type=kind, message=message))
