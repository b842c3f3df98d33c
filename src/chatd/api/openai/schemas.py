"""OpenAI Chat Completions request and response bodies, as far as chatd speaks them.

Requests accept (and ignore) the many optional fields the OpenAI SDKs and the tools built on
them send, so those clients work unchanged; the fields chatd uses are validated.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chatd.bounds import MAX_TOKENS, beyond_int64_at


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Lenient):
    """A function call's name and JSON-encoded arguments."""

    name: str = Field(max_length=256)
    arguments: str = "{}"


class ToolCall(_Lenient):
    """A tool call, in a request's assistant message or a response."""

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Lenient):
    """One part of a message's content; chatd takes text parts only."""

    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    """One message of the conversation the client sends."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    """A function the model may call."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _fits(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        found = None if value is None else beyond_int64_at(value)
        if found is not None:
            place = ".".join(str(x) for x in found)
            raise ValueError(f"{place}: integers must fit in 64 bits (-2**63 to 2**63-1)")
        return value


class ToolDef(_Lenient):
    """A tool the model may call."""

    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(_Lenient):
    """Streaming options."""

    include_usage: bool = False


class CompletionRequest(_Lenient):
    """A Chat Completions request."""

    model: str = Field(
        min_length=1,
        max_length=255,
        description='"provider/model", or a bare model name for the default provider',
        examples=["anthropic/claude-sonnet-4-5"],
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stop: str | list[str] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Any = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None


class Usage(BaseModel):
    """Token counts, OpenAI style."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    """The assistant's message."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    """The one choice chatd returns."""

    index: int = 0
    message: ReplyMessage
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    """A Chat Completions response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Model(BaseModel):
    """One model."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    """The models a client may name."""

    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    """What went wrong, OpenAI style."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error shape, so the SDKs raise the matching exception class."""

    error: OpenAIErrorDetail
