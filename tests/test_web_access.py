"""One access rule for every socket: origins and the bearer token."""

from __future__ import annotations

from pipecat_vibevoice.web_access import AccessPolicy, parse_origins

HOST = "bot.example:7860"


def test_own_pages_and_non_browsers_pass_by_default() -> None:
    policy = AccessPolicy()
    assert policy.origin_ok("http://bot.example:7860", HOST)
    assert policy.origin_ok("https://BOT.example:7860/", HOST)  # scheme and case ignored
    assert policy.origin_ok(None, HOST) and policy.origin_ok("", HOST)  # not a browser
    assert not policy.origin_ok("https://evil.example", HOST)
    assert not policy.origin_ok("http://bot.example:7861", HOST)  # another port, another site
    assert not policy.origin_ok("http://bot.example:7860", None)


def test_the_allow_list_and_pipecats_variable() -> None:
    policy = AccessPolicy.from_settings(
        "https://app.example, https://other.example/",
        environ={"PIPECAT_ALLOWED_ORIGINS": "https://pipecat.example"},
    )
    assert policy.allowed_origins == parse_origins(
        "https://app.example,https://other.example,https://pipecat.example"
    )
    assert policy.origin_ok("https://other.example", HOST)
    assert policy.origin_ok("https://pipecat.example", HOST)
    assert not policy.origin_ok("https://evil.example", HOST)
    assert AccessPolicy.from_settings("*", environ={}).origin_ok("https://any.example", HOST)


def test_token_from_header_or_query_and_refusal_reasons() -> None:
    policy = AccessPolicy(token="s3cret")
    assert policy.token_ok("Bearer s3cret", b"")
    assert policy.token_ok(None, b"a=1&token=s3cret")
    assert not policy.token_ok("Bearer nope", b"") and not policy.token_ok(None, b"")
    assert policy.check({"host": HOST}, b"token=s3cret") is None
    assert policy.check({"host": HOST}, b"").reason == "unauthorized"
    assert policy.check({"host": HOST, "origin": "https://evil.example"}, b"").reason == (
        "forbidden_origin"
    )
    assert AccessPolicy().check({"host": HOST}, b"") is None  # no token configured
