"""Every turn and stateless call ends with one report for logs and metrics, with no text in it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from chatd.engine import ChatService, CompletionOptions, TurnOptions
from chatd.errors import UpstreamBadRequest
from chatd.types import CallReport, GenerationParams, Message

ServiceFactory = Callable[..., Awaitable[ChatService]]


async def reported(service: ChatService) -> list[CallReport]:
    """Attach a list the service's reports go to."""
    reports: list[CallReport] = []
    service.observers.append(reports.append)
    return reports


async def test_a_turn_reports_what_it_did_without_its_text(
    make_service: ServiceFactory,
) -> None:
    service = await make_service("anthropic")
    reports = await reported(service)
    secret = "my card number is 4111 1111"
    options = TurnOptions(user_id="ann", request_id="req-1")
    end = await service.reply("s1", f"{secret} [fake: status=529 fail_times=1]", options)
    [report] = reports
    assert (report.kind, report.user_id, report.session_id, report.turn_id) == (
        "turn",
        "ann",
        "s1",
        end.turn_id,
    )
    assert (report.state, report.request_id, report.model) == ("complete", "req-1", "test-model")
    assert report.usage == end.usage
    assert report.retries == 1
    assert report.upstream_errors == ("UpstreamUnavailable",)
    assert report.latency_ms > 0
    assert report.ttft_ms is not None
    assert "4111" not in repr(report)


async def test_a_failed_turn_reports_its_error_class(make_service: ServiceFactory) -> None:
    service = await make_service("openai")
    reports = await reported(service)
    with pytest.raises(UpstreamBadRequest):
        await service.reply("s2", "x [fake: status=400]")
    [report] = reports
    assert (report.state, report.error) == ("failed", "UpstreamBadRequest")
    assert report.retries == 0


async def test_a_stateless_completion_reports_too(make_service: ServiceFactory) -> None:
    service = await make_service("openai")
    reports = await reported(service)
    options = CompletionOptions(
        params=GenerationParams(max_tokens=3), user_id="bob", request_id="req-2"
    )
    async for _ in service.complete([Message.user("count to ten [fake: words=20]")], options):
        pass
    [report] = reports
    assert (report.kind, report.user_id, report.state, report.request_id) == (
        "completion",
        "bob",
        "truncated",
        "req-2",
    )
    assert report.usage.output_tokens == 3
    assert report.session_id is None
