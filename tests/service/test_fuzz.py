"""Property-based fuzzing of every RPC's request message against a real server.

Every request message of every RPC of every tm service the server registers
is generated from its descriptor (``messages``). Most messages are what a
well-behaved client sends but for one field, some are hostile throughout:
strings mix ids of tasks the run made or saw (as they are, or in another
form), module names and page tokens in use, UUIDs, empty, junk, unicode and
texts past the limits; integers and doubles sit at and past their bounds
(negative, huge, NaN, infinities, -0); optional fields are set or not; nested
Durations are out of range. Real ids and the next pages of real listings
come often, so that calls reach deep into the server rather than stop at
validation. The methods are dealt in weighted, shuffled rounds (``Deck``);
each step is a short hypothesis run of one method's requests, with a fixed
seed, so a run is reproducible.

Each call must end without UNKNOWN or INTERNAL, within its deadline (waits
excepted, which the client ends), any error must carry a google.rpc ErrorInfo
of domain "tm", and replies must carry no NaN, infinity, unset state or
invalid time. After every step the registry's invariants must hold
(``registry_violations``); after each run the server must still serve.
Bodies that do not decode at all are ``test_hardening``'s.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_reflection.v1alpha import reflection_pb2

from tm_server.security.tokens import hash_token

from ..fuzzing.messages import ALL_RPCS, RPCS
from ..fuzzing.run import (
    PRINCIPALS,
    Run,
    children_pages_agree,
    fuzz,
    metadata_for,
    report,
    seed_forest,
    still_serves,
)

# ---- the tests -------------------------------------------------------------------------------


def test_every_service_the_server_serves_is_fuzzed(make_run: Callable[..., Run]) -> None:
    run = make_run()
    info = run.channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(
        info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    served = {s.name for s in replies[0].list_services_response.service}
    assert served - set(RPCS) == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert set(RPCS) <= served


@pytest.mark.parametrize("service", sorted(RPCS), ids=lambda s: s.rsplit(".", 1)[-1])
def test_fuzz_each_service(
    service: str, make_run: Callable[..., Run], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run = make_run()
    seed_forest(run)
    fuzz(run, RPCS[service], steps=60, caplog=caplog)
    children_pages_agree(run)
    still_serves(run)
    assert run.violations() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], report(run, [], caplog)
    # Every method was called, and got past the checks of its request at least once.
    for method in RPCS[service]:
        codes = run.codes.get(repr(method), Counter())
        assert codes.total() > codes["INVALID_ARGUMENT"], (method, codes)


def test_fuzz_all_services_interleaved(
    make_run: Callable[..., Run], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run = make_run(producer_lease_seconds=1.0)  # sessions' leases run out during the run
    seed_forest(run)
    fuzz(run, ALL_RPCS, steps=200, caplog=caplog)
    children_pages_agree(run)
    still_serves(run)
    assert run.violations() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], report(run, [], caplog)


def test_fuzz_with_access_checks(
    make_run: Callable[..., Run], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        "".join(
            f'[[principal]]\nname = "{name}"\nroles = {roles!r}\n'.replace("'", '"')
            + f'tokens = ["{hash_token(f"token-of-{name}")}"]\n'
            for name, roles in PRINCIPALS.items()
        )
    )
    run = make_run(tokens=tokens)
    seed_forest(run, metadata_for("root"))
    callers = [
        *(metadata_for(name) for name in PRINCIPALS),
        *(metadata_for(name) for name in ("producer", "producer", "root")),
        (),
        (("authorization", "Bearer not-a-token"),),
        (("authorization", "Basic cm9vdDpyb290"),),
    ]
    fuzz(run, ALL_RPCS, steps=120, callers=callers, caplog=caplog)
    children_pages_agree(run, metadata_for("root"))
    still_serves(run, metadata_for("root"))
    assert run.violations() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], report(run, [], caplog)
