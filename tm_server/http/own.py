"""tm's own JSON endpoints: who the caller is, the cluster's nodes, a task's children, login."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from tm_server.core import TaskManager
from tm_server.core.validation import MAX_PAGE_SIZE
from tm_server.security.roles import Principal, Role
from tm_server.service.auth import AccessRefused, AuthInterceptor

from . import params
from .errors import HttpError, bad_argument, from_refusal
from .rest import empty_response, json_response
from .routing import (
    CSRF_COOKIE,
    TOKEN_COOKIE,
    Call,
    Route,
    certificate_identity,
    credentials_of,
    task_field,
)
from .shapes import children_json, node_json

_TM = "/tm.v1.TaskManagerService/"
#: The longest login body read.
_MAX_LOGIN_BYTES = 8 * 1024


def capabilities(principal: Principal | None) -> dict[str, Any]:
    """What the dashboard may offer the caller: reading, aborting (where), setting TTLs."""
    if principal is None:  # the server checks no callers: everyone may do everything
        return {"read": True, "abort": True, "set_ttl": True}
    abort: bool | list[str] = principal.allows(Role.OPERATOR)
    if not abort:
        abort = sorted(
            g.module for g in principal.grants if g.role is Role.OPERATOR and g.module is not None
        )
    return {
        "read": principal.allows_somewhere(Role.READER),
        "abort": abort,
        "set_ttl": principal.allows(Role.OPERATOR),
    }


class OwnApi:
    """The handlers; ``routes`` lists them with the RPCs they stand for."""

    def __init__(
        self,
        manager: TaskManager,
        access: AuthInterceptor,
        nodes: Callable[[], Awaitable[Sequence[Any]]],
        *,
        secure_cookies: bool,
    ) -> None:
        self._tm = manager
        self._access = access
        self._nodes = nodes
        self._secure = secure_cookies

    def routes(self) -> list[Route]:
        """Tm's own paths."""
        return [
            Route("GET", "/tm/v1/whoami", None, self.whoami),
            Route("GET", "/tm/v1/nodes", _TM + "ListNodes", self.nodes),
            Route(
                "GET", "/tm/v1/children/{task_id}", _TM + "ListTaskChildren",
                self.children, task_field,
            ),
            Route("POST", "/tm/v1/login", None, self.login),
            Route("POST", "/tm/v1/logout", None, self.logout),
        ]  # fmt: skip

    def _identify(self, request: web.Request) -> Principal | None:
        if not self._access.enabled:
            return None
        header, _ = credentials_of(request)
        try:
            principal, _ = self._access.authenticate(header, certificate_identity(request))
        except AccessRefused as refusal:
            raise from_refusal(refusal) from None
        return principal

    async def whoami(self, call: Call) -> web.StreamResponse:
        """``GET /tm/v1/whoami``: the caller, its grants, what it may do here."""
        principal = self._identify(call.request)
        return json_response(
            {
                "principal": "" if principal is None else principal.name,
                "checks_callers": self._access.enabled,
                "grants": []
                if principal is None
                else [
                    {"role": g.role.value, "modules": None if g.module is None else [g.module]}
                    for g in principal.grants
                ],
                "can": capabilities(principal),
                "node": self._tm.node,
            }
        )

    async def nodes(self, call: Call) -> web.StreamResponse:
        """``GET /tm/v1/nodes``."""
        return json_response([node_json(node) for node in await self._nodes()])

    async def children(self, call: Call) -> web.StreamResponse:
        """``GET /tm/v1/children/{task_id}?page_size=&page_token=``."""
        request = call.request
        children, count, token = await self._tm.list_children(
            params.task_id(request),
            page_size=params.integer(request, "page_size", minimum=1, maximum=MAX_PAGE_SIZE) or 0,
            page_token=params.text(request, "page_token"),
        )
        return json_response(children_json(children, count, token))

    async def login(self, call: Call) -> web.StreamResponse:
        """``POST /tm/v1/login``: a token (JSON ``{"token"}`` or a form) for the cookies."""
        request = call.request
        token = await _login_token(request)
        principal: Principal | None = None
        if self._access.enabled:
            try:
                principal, _ = self._access.authenticate(f"Bearer {token}", None)
            except AccessRefused as refusal:
                raise from_refusal(refusal) from None
        response = json_response(
            {
                "principal": "" if principal is None else principal.name,
                "can": capabilities(principal),
            }
        )
        # The token is HttpOnly (no script of the page reads it) and goes to
        # this server only; the CSRF twin is read by the page and sent back
        # in a header, which no other site can do.
        response.set_cookie(
            TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=self._secure, path="/"
        )
        response.set_cookie(
            CSRF_COOKIE, secrets.token_urlsafe(24), samesite="Strict", secure=self._secure,
            path="/",
        )  # fmt: skip
        return response

    async def logout(self, call: Call) -> web.StreamResponse:
        """``POST /tm/v1/logout``: clears the cookies."""
        response = empty_response()
        response.del_cookie(TOKEN_COOKIE, path="/")
        response.del_cookie(CSRF_COOKIE, path="/")
        return response


async def _login_token(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > _MAX_LOGIN_BYTES:
        raise HttpError(413, "a login body is a token, at most 8 KiB", "INVALID_ARGUMENT")
    raw = await request.content.read(_MAX_LOGIN_BYTES + 1)
    if len(raw) > _MAX_LOGIN_BYTES:
        raise HttpError(413, "a login body is a token, at most 8 KiB", "INVALID_ARGUMENT")
    token: Any = None
    if request.content_type == "application/json":
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise bad_argument("token", "the login body is not JSON") from None
        token = body.get("token") if isinstance(body, dict) else None
    else:
        found = parse_qs(raw.decode("utf-8", "replace")).get("token")
        token = found[0] if found else None
    if not isinstance(token, str) or not token.strip():
        raise bad_argument("token", 'send the token as JSON {"token": "..."} or a form field')
    return token.strip()


__all__ = ["OwnApi", "SimpleNamespace", "capabilities"]
