"""One error taxonomy for every layer.

Code deep in the stack raises these; only the edges (CLI, HTTP API, gRPC) translate them into exit
codes, HTTP statuses and gRPC status codes, so a message never needs rewording on its way out.
"""

from __future__ import annotations


class BerthError(Exception):
    """Base of every error berth reports to a user: one line of text that names the problem."""

    exit_code = 125  # Docker's and Podman's "the engine itself failed"
    http_status = 500
    grpc_code = "INTERNAL"


class InvalidArgument(BerthError):
    """Malformed input: a flag, a config.json field, an id, a reference."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class NotFound(BerthError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class AlreadyExists(BerthError):
    http_status = 409
    grpc_code = "ALREADY_EXISTS"


class Conflict(BerthError):
    """The object exists but is in the wrong state for the request (start of a running container)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class PermissionDenied(BerthError):
    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class Unsupported(BerthError):
    """Valid input that this kernel, machine or version of berth cannot honour."""

    http_status = 501
    grpc_code = "UNIMPLEMENTED"


class CannotInvoke(BerthError):
    """The container's command exists but cannot be executed (Docker's exit code 126)."""

    exit_code = 126
    http_status = 400
    grpc_code = "FAILED_PRECONDITION"


class CommandNotFound(BerthError):
    """The container's command does not exist (Docker's exit code 127)."""

    exit_code = 127
    http_status = 400
    grpc_code = "NOT_FOUND"
