"""After a model response: which container files it cites, and what saving them did.

A Responses API answer that used the code interpreter cites the files its code wrote as
``container_file_citation`` annotations (``container_id``, ``file_id``, ``filename``) on its output
text. ``citations`` reads them from the official SDK's ``Response`` object or from its dict (no
import of the SDK: anything with ``model_dump`` or a plain mapping), wherever they sit in the
output. Pure: the saving itself is ``Sessions.after_response``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hearth.errors import HearthError

CITATION = "container_file_citation"


@dataclass(frozen=True)
class Citation:
    container_id: str
    file_id: str
    filename: str | None = None


def response_data(response: Any) -> Any:
    """The response as plain JSON-like data: an SDK model dumped, a mapping as it is, None as nothing."""
    if response is None:
        return {}
    if hasattr(response, "model_dump"):
        return response.model_dump(mode="json")
    if isinstance(response, Mapping):
        return response
    raise HearthError(f"after_response wants a Responses API response (an SDK Response or its dict), "
                      f"not {type(response).__name__}")


def citations(response: Any) -> list[Citation]:
    """Every ``container_file_citation`` in the response, in order, each once."""
    found: dict[tuple[str, str], Citation] = {}
    stack: list[Any] = [response_data(response)]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if node.get("type") == CITATION and isinstance(node.get("container_id"), str) \
                    and isinstance(node.get("file_id"), str):
                key = (node["container_id"], node["file_id"])
                found.setdefault(key, Citation(key[0], key[1], node.get("filename")))
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list | tuple):
            stack.extend(reversed(node))
    return list(found.values())


@dataclass(frozen=True)
class SessionSave:
    """What a save after a model response (or ``hearth session save``) did.

    ``cited``: each file the response cites in the session's container, with ``status`` ``saved`` (this
    call copied it), ``already`` (an earlier save had), ``skipped: <reason>`` or ``missing`` (the
    container does not list it). ``refused``: citations of a container that is not the session's
    current one (nothing is read from it). ``saved``: every file this call copied.
    """

    session_id: str
    found: bool
    container_id: str | None = None
    message: str = ""
    cited: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    saved: list[dict[str, Any]] = field(default_factory=list)
    already: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every cited file of the session's container and every new file is in storage."""
        return self.found and self.failures == 0 and all(c["status"] in ("saved", "already") for c in self.cited)

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "found": self.found, "container_id": self.container_id,
            "message": self.message, "complete": self.complete, "cited": list(self.cited),
            "refused": list(self.refused), "saved": list(self.saved), "already": self.already,
            "failures": self.failures, "errors": list(self.errors),
        }
