"""Errors the server returns, in the body OpenAI's API uses so that its clients parse them.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``; the official
``openai`` client raises ``BadRequestError`` (400), ``UnprocessableEntityError`` (422), ...
with ``message`` and ``param`` taken from it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ferrule_core.errors import ConfigError


class APIError(Exception):
    """An error to send back as HTTP ``status`` with an OpenAI error body.

    >>> APIError(400, "n=0 must be between 1 and 128", param="n").body()["error"]["param"]
    'n'
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, param={self.param!r})"


def validation_error(exc: Any) -> APIError:
    """A 422 naming each bad field (``messages.0.role``) and why, ``param`` the first one.

    Takes a ``pydantic.ValidationError``, or anything with its ``errors()`` (FastAPI's
    ``RequestValidationError``, whose locations start with ``body``, which is dropped).
    """
    lines: list[str] = []
    params: list[str | None] = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        where = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "missing":
            line = f"{where}: this field is required"
        else:
            line = f"{where}: {message}{_got(error['input']) if 'input' in error else ''}"
        if line not in lines:
            lines.append(line)
            params.append(where if loc else None)
    message = "; ".join(lines) or "the request body is invalid"
    return APIError(422, message, param=next(iter(params), None))


def config_error(exc: ConfigError, *, param: str | None = None) -> APIError:
    """A 400 from the :class:`ConfigError` that ``SamplingParams`` raised, with its message.

    ``param`` defaults to the field its first problem names (``"top_k=-2 must be ..."``).
    """
    if param is None and exc.problems:
        match = re.match(r"(\w+)=", exc.problems[0])
        param = match.group(1) if match else None
    return APIError(400, str(exc), param=param)


def _got(value: Any) -> str:
    """`` (got "hot")`` for a short scalar input; nothing for containers or long values."""
    if isinstance(value, (dict, list, tuple)):
        return ""
    text = json.dumps(value, default=repr)  # as the client wrote it: null, true, "bot"
    return f" (got {text})" if len(text) <= 60 else ""
