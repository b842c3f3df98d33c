"""Tools from typed functions: JSON schema from the signature, input validated before running."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from chatd.errors import ConfigError
from chatd.types import ToolCallPart, ToolResultPart, ToolSpec


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable the model may use, with the model that validates its input."""

    spec: ToolSpec
    input_model: type[BaseModel]
    fn: Callable[..., Any]


def tool(fn: Callable[..., Any], *, name: str | None = None) -> Tool:
    """Make a Tool from a typed function; its docstring's first line is the description."""
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        if param.annotation is inspect.Parameter.empty:
            raise ConfigError(f"tool {fn.__name__}: parameter {param.name!r} needs a type")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (param.annotation, default)
    model = create_model(f"{fn.__name__}_input", __config__=ConfigDict(extra="forbid"), **fields)
    description = (inspect.getdoc(fn) or fn.__name__).splitlines()[0]
    spec = ToolSpec(name or fn.__name__, description, model.model_json_schema())
    return Tool(spec, model, fn)


def _render(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


class ToolRegistry:
    """Name → tool, and the one place tools run: validated, timed out, errors caught."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool) -> None:
        """Add a tool; a second tool of the same name replaces the first."""
        self._tools[t.spec.name] = t

    def names(self) -> list[str]:
        """Return the registered tool names."""
        return sorted(self._tools)

    def specs(self, names: Iterable[str]) -> tuple[ToolSpec, ...]:
        """Return the specs of the named tools, or raise ConfigError for an unknown one."""
        out = []
        for n in names:
            if n not in self._tools:
                known = ", ".join(self.names()) or "none"
                raise ConfigError(f"unknown tool {n!r}; known tools: {known}")
            out.append(self._tools[n].spec)
        return tuple(out)

    async def run(self, call: ToolCallPart, timeout_s: float) -> ToolResultPart:
        """Run one call; bad input, errors and timeouts come back as error results."""
        t = self._tools.get(call.name)
        if t is None:
            return ToolResultPart(call.id, f"no tool named {call.name!r}", is_error=True)
        try:
            args = t.input_model.model_validate(dict(call.input))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
            )
            return ToolResultPart(call.id, f"invalid input for {call.name}: {problems}", True)
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        try:
            async with asyncio.timeout(timeout_s):
                if inspect.iscoroutinefunction(t.fn):
                    value = await t.fn(**kwargs)
                else:
                    value = await asyncio.to_thread(t.fn, **kwargs)
        except TimeoutError:
            return ToolResultPart(call.id, f"{call.name} timed out after {timeout_s:g}s", True)
        except Exception as exc:
            return ToolResultPart(call.id, f"{call.name} failed: {type(exc).__name__}: {exc}", True)
        return ToolResultPart(call.id, _render(value))
