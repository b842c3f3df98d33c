"""The exception tree; each class maps to one HTTP status.

ChatdError                      500  anything we did not foresee
├── ConfigError                 400  unknown provider/model, bad database URL, bad setting
│   └── ProviderNotConfigured   400  the chosen provider lacks its key; names the variable
├── InputError                  422  empty message, bad id, malformed file
│   ├── InputTooLarge           413  over a configured cap
│   └── IdempotencyConflict     422  an idempotency key reused with another message
├── Unauthorized                401  no API key, or one that is unknown, revoked or expired
├── Forbidden                   403  an admin route called with a key that is not an admin's
├── NotFound                    404  no such session (or not the caller's)
├── AlreadyExists               409  importing over an existing session
├── SessionBusy                 409  a turn is already in flight on this session
├── NothingToContinue           409  continuing a session whose last reply is not truncated
├── NothingToRegenerate         409  regenerating the last reply of a session with no turns
├── NothingToStop               409  stopping a session with no turn in flight
├── TurnDiscarded               409  the session was deleted or reset while its reply streamed
├── TurnStopped                 503  the server stopped the turn (shutting down)
│   └── TurnStoppedOnRequest    409  a user asked to stop it (POST /v1/sessions/{id}/stop)
├── StoreUnavailable            503  the database cannot be reached
└── UpstreamError               502  the model provider misbehaved
    ├── UpstreamAuthError       502  the provider refused our key
    ├── UpstreamBadRequest      502  the provider rejected the request
    │   └── ContextOverflow     413  even this turn alone is longer than the model's window
    ├── UpstreamRateLimited     429  rate limited, retries exhausted or quota spent
    ├── UpstreamUnavailable     503  5xx/529/connection trouble, retries exhausted
    ├── UpstreamStreamError     502  the reply broke off mid-stream
    └── ToolRoundsExceeded      502  the model kept calling tools past the limit
"""

from __future__ import annotations

import math

# The longest wait taken from an upstream's retry hint, and the most chatd tells a client to
# wait: a hint of hours (or of infinity) would only park retries and clients for nothing.
MAX_RETRY_AFTER_S = 300.0


def bounded_wait(seconds: float | None) -> float | None:
    """Clamp a retry hint to 0..MAX_RETRY_AFTER_S seconds; None for one that is not a number."""
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class ChatdError(Exception):
    """Base of every error chatd raises on purpose."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ChatdError):
    """A setting, provider or model that cannot work."""

    status = 400


class ProviderNotConfigured(ConfigError):
    """The chosen provider has no credentials."""


class InputError(ChatdError):
    """Input a person can fix."""

    status = 422


class InputTooLarge(InputError):
    """Input over a configured cap."""

    status = 413


class IdempotencyConflict(InputError):
    """An idempotency key was sent again with a different message."""


class Unauthorized(ChatdError):
    """The request carries no usable API key."""

    status = 401


class Forbidden(ChatdError):
    """The caller's key may not do this."""

    status = 403


class AlreadyExists(ChatdError):
    """The thing to create is already there."""

    status = 409


class NotFound(ChatdError):
    """No such thing, as far as the caller may know."""

    status = 404


class SessionBusy(ChatdError):
    """Another turn is in flight on the same session."""

    status = 409


class NothingToContinue(ChatdError):
    """A continuation was asked for, but the session's newest turn is not a truncated reply."""

    status = 409


class NothingToRegenerate(ChatdError):
    """The last reply was to be regenerated, but the session has no turn yet."""

    status = 409


class NothingToStop(ChatdError):
    """A stop was asked for, but no turn is in flight on the session (or it just finished)."""

    status = 409


class TurnDiscarded(ChatdError):
    """The turn's session was deleted or reset while the reply streamed; nothing of it is kept."""

    status = 409


class TurnStopped(ChatdError):
    """The server stopped a turn before it finished, e.g. while shutting down."""

    status = 503


class TurnStoppedOnRequest(TurnStopped):
    """A user asked to stop the turn; it is kept, interrupted, with what it said so far."""

    status = 409


class StoreUnavailable(ChatdError):
    """The database is unreachable."""

    status = 503


class UpstreamError(ChatdError):
    """The model provider failed; retryable ones carry a hint of when to try again."""

    status = 502
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    @property
    def retry_after(self) -> float | None:
        """Return the provider's retry hint in seconds, within 0..MAX_RETRY_AFTER_S."""
        return self._retry_after

    @retry_after.setter
    def retry_after(self, seconds: float | None) -> None:
        # Bounded here, where every provider's hint passes, so no consumer meets inf or nan.
        self._retry_after = bounded_wait(seconds)


class UpstreamAuthError(UpstreamError):
    """The provider refused the credentials."""


class UpstreamBadRequest(UpstreamError):
    """The provider rejected the request as malformed or too large."""


class ContextOverflow(UpstreamBadRequest):
    """The provider said the prompt is longer than the model's context window."""

    # What reaches a caller is one chatd could not cut down: this turn's own message (with the
    # system prompt and tools) does not fit the model, which retrying will not change.
    status = 413

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        limit: int | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status)
        # What the provider's message said, when it said: the window, and the prompt's size.
        self.limit = limit
        self.prompt_tokens = prompt_tokens


class UpstreamRateLimited(UpstreamError):
    """The provider rate limited us."""

    status = 429
    retryable = True


class UpstreamUnavailable(UpstreamError):
    """The provider is down, overloaded or unreachable."""

    status = 503
    retryable = True


class UpstreamStreamError(UpstreamError):
    """The reply stream broke off or carried an error event."""


class ToolRoundsExceeded(UpstreamError):
    """The model asked for more tool rounds than allowed."""
