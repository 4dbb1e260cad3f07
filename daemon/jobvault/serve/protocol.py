"""JSON-RPC 2.0 framing for the Unix socket: one JSON object per line, UTF-8, `\\n`.

Only what the transport needs lives here: parsing a request line, error objects with a stable
`data.kind`, and encoding responses and notifications. Methods live in `serve/methods.py`.
The socket client and the CLI import this module for `RpcError` alone, so orjson (the
daemon's codec, 10 ms to import) is imported by the functions that use it.
"""

from __future__ import annotations

from jobvault.errors import JobvaultError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, Final

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Server-defined errors (-32000 to -32099).
NOT_FOUND: Final = -32001
TIMEOUT: Final = -32002
TOO_LARGE: Final = -32003
OVERLOADED: Final = -32004
REFUSED: Final = -32005
SQL_ERROR: Final = -32006
DROPPED: Final = -32007
UNAVAILABLE: Final = -32008
RESULT_TOO_LARGE: Final = -32009


class RpcError(JobvaultError):
    """A request failed; carries a JSON-RPC code and a stable `data.kind`."""

    def __init__(self, code: int, kind: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.data = data
        self.request_id: Any = None  # the id of the request it answers, when it was readable

    def to_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self), "data": {"kind": self.kind, **self.data}}


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, "invalid_params", message)


class Request:
    """One parsed request line."""

    __slots__ = ("id", "is_notification", "method", "params")

    def __init__(
        self, method: str, params: dict[str, Any] | list[Any], ident: int | str | None,
        is_notification: bool,
    ) -> None:  # fmt: skip
        self.method = method
        self.params = params
        self.id = ident
        self.is_notification = is_notification


def parse_request(line: bytes) -> Request:
    """Parse one line into a request, or raise RpcError (with the id when it was readable)."""
    import orjson

    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, "parse_error", f"not valid JSON: {exc}") from None
    if isinstance(message, list):
        raise RpcError(INVALID_REQUEST, "batch_unsupported", "batch requests are not supported")
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "invalid_request", "a request must be a JSON object")
    ident = message.get("id")
    has_id = "id" in message
    if has_id and not (
        ident is None
        or isinstance(ident, str)
        or (isinstance(ident, int) and not isinstance(ident, bool))
    ):
        raise RpcError(
            INVALID_REQUEST, "invalid_request", "id must be a string, an integer or null"
        )
    if message.get("jsonrpc") != "2.0":
        raise _with_id(RpcError(INVALID_REQUEST, "invalid_request", 'jsonrpc must be "2.0"'), ident)
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise _with_id(
            RpcError(INVALID_REQUEST, "invalid_request", "method must be a string"), ident
        )
    params = message.get("params", {})
    if not isinstance(params, dict | list):
        raise _with_id(invalid_params("params must be an object or an array"), ident)
    return Request(method, params, ident, not has_id)


def _with_id(error: RpcError, ident: Any) -> RpcError:
    error.request_id = ident
    return error


def error_id(error: RpcError) -> Any:
    return error.request_id


def encode_result(ident: Any, result: Any) -> bytes:
    import orjson

    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "result": result}) + b"\n"


def encode_error(ident: Any, error: RpcError) -> bytes:
    import orjson

    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "error": error.to_error()}) + b"\n"


def encode_notification(method: str, params: Any) -> bytes:
    import orjson

    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params}) + b"\n"
