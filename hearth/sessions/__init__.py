"""Sessions: a sticky lease per conversation key, and a conversation that outlives its container.

An app calls ``Sessions.lease(pool, session="conversation-123")`` at every turn. The same key gets
the same container for as long as that container lives (a Redis read and one lease-renew script: a
few ms; a retrieve now and then to be sure it is still alive). A new key takes a READY container
from the pool. When the key's container expired, failed, vanished or its lease lapsed, the next
lease takes a fresh container and restores into it every file the session had, from the harvest
storage, and says so (``restored=True``, ``restored_files``). Python variables are lost; files are
not. While the session is active its new files are saved every period (``live``) and at once after
a model response (``Sessions.after_response``).

Where to read, in order:

* ``core``: ``SessionsCore``, the decisions (lease, bind, end, after_response) as sans-IO steps, and
  ``Sessions``, its sync face; ``async_sessions``: ``AsyncSessions``, its face on ``redis.asyncio``.
* ``records``: what Redis keeps (``SessionRecord``, keyed by the key's hash) and the per-session lock.
* ``restore``: every file of the earlier containers back into a fresh one, byte for byte.
* ``saving``: one save of the current container, and which of its files are saved already.
* ``live``: the save-due schedule the heartbeat reads and the live saves (one request per session),
  in batches.
* ``responses``: the ``container_file_citation`` annotations of a model response.

Privacy: the key is an app's string (often a user or conversation id). Only its hash
(``session_hash``) reaches Redis keys, values, task arguments and logs.
"""

from hearth.files.inputs import restore_name
from hearth.sessions.async_sessions import AsyncSessions
from hearth.sessions.core import INLINE_HARVEST_WAIT, Sessions, SessionsCore
from hearth.sessions.live import LIVE_SAVE_TASK, SAVES_TASK, LiveSave, LiveSaves, save_period
from hearth.sessions.records import (
    RecordStore,
    SessionContainer,
    SessionEnd,
    SessionLease,
    SessionRecord,
    session_hash,
)
from hearth.sessions.responses import Citation, SessionSave, citations
from hearth.sessions.restore import RestoreItem

__all__ = [
    "INLINE_HARVEST_WAIT",
    "LIVE_SAVE_TASK",
    "SAVES_TASK",
    "AsyncSessions",
    "Citation",
    "LiveSave",
    "LiveSaves",
    "RecordStore",
    "RestoreItem",
    "SessionContainer",
    "SessionEnd",
    "SessionLease",
    "SessionRecord",
    "SessionSave",
    "Sessions",
    "SessionsCore",
    "citations",
    "restore_name",
    "save_period",
    "session_hash",
]
