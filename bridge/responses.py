"""The response envelope every endpoint answers senders with (Flashduty's own)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def envelope(status: int, request_id: str, *, data: Any = None, code: str = "", message: str = "") -> JSONResponse:
    """``{"request_id", "data"}`` on success, ``{"request_id", "error": {"code", "message"}}`` otherwise."""
    body: dict[str, Any] = {"request_id": request_id}
    if code:
        body["error"] = {"code": code, "message": message}
    else:
        body["data"] = data if data is not None else {}
    return JSONResponse(body, status_code=status)
