#!/usr/bin/env python3
"""Drives a node's `echo` agent with the official A2A Python SDK (a2a-sdk 1.3.0).

An independent A2A v1.0 client for CI: every scenario goes through the SDK's
`Client` (card resolution, JSON-RPC or HTTP+JSON transport, SSE, error mapping);
raw httpx is used only where the SDK cannot express the case (a request without
`A2A-Version` or without a token), and those scenarios say so in their detail.

    python sdk_client.py --card-url http://127.0.0.1:8080/a2a/echo/.well-known/agent-card.json \
        --token TOKEN --binding jsonrpc

Prints one JSON line per scenario, {"scenario", "ok", "detail"}, and exits 1 if
any failed (2 on a usage error). The push scenarios start a webhook receiver on
127.0.0.1 (an OS-chosen port), so the server must be allowed to call loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from google.protobuf import json_format

from a2a.client import (
    A2ACardResolver,
    A2AClientError,
    AuthInterceptor,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
    CredentialService,
)
from a2a.types import (
    AgentCard,
    AuthenticationInfo,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskPushNotificationConfig,
    TaskState,
    UnsupportedOperationError,
)
from a2a.utils.errors import A2AError

# The echo agent's scripted behaviours (agents/src/echo.rs): a messageId with this
# prefix works for a few seconds (WORKING, then COMPLETED unless canceled).
LONG_RUNNING = "test-resubscribe-message-id"
INPUT_REQUIRED = "tck-input-required"
TERMINAL = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
}
BINDINGS = {"jsonrpc": "JSONRPC", "rest": "HTTP+JSON"}


class Failed(Exception):
    """A scenario's check did not hold."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def state_name(state: int) -> str:
    return TaskState.Name(state)


def as_json(msg: Any) -> Any:
    return json_format.MessageToDict(msg)


def text_message(text: str, *, message_id: str | None = None, task_id: str = "",
                 context_id: str = "", data: dict | None = None) -> Message:
    parts = [Part(text=text)]
    if data is not None:
        part = Part()
        part.data.struct_value.update(data)
        parts.append(part)
    return Message(role=Role.ROLE_USER, message_id=message_id or f"sdk-{uuid.uuid4()}",
                   task_id=task_id, context_id=context_id, parts=parts)


def artifact_text(task: Task) -> str:
    return "".join(p.text for a in task.artifacts for p in a.parts if p.HasField("text"))


class TokenCredentials(CredentialService):
    """The bearer token for whatever scheme the card requires."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_credentials(self, security_scheme_name: str,
                              context: ClientCallContext | None) -> str | None:
        return self.token


class PushReceiver:
    """A webhook on 127.0.0.1 (port chosen by the OS) recording every POST."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with receiver.cond:
                    receiver.posts.append({"path": self.path, "headers": dict(self.headers.items()),
                                           "body": body, "raw": raw.decode(errors="replace")})
                    receiver.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path: str) -> list[dict]:
        with self.cond:
            return [p for p in self.posts if p["path"] == path]

    async def wait_final(self, path: str, task_id: str, timeout: float) -> list[dict]:
        """The POSTs to `path` once one carries a terminal state of `task_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            posts = self.for_path(path)
            if any(_terminal_in(p["body"], task_id) for p in posts):
                return posts
            await asyncio.sleep(0.1)
        raise Failed(f"no push with a terminal state of {task_id} within {timeout}s; "
                     f"got {[p['body'] for p in self.for_path(path)]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _terminal_in(body: Any, task_id: str) -> bool:
    if not isinstance(body, dict):
        return False
    state = None
    if "statusUpdate" in body and body["statusUpdate"].get("taskId") == task_id:
        state = body["statusUpdate"].get("status", {}).get("state")
    elif "task" in body and body["task"].get("id") == task_id:
        state = body["task"].get("status", {}).get("state")
    return state in {state_name(s) for s in TERMINAL}


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.binding = BINDINGS[args.binding]
        self.timeout = args.timeout
        self.results: list[dict] = []
        self.card: AgentCard | None = None
        self.http: httpx.AsyncClient | None = None
        self.blocking: Client | None = None
        self.streaming: Client | None = None
        self.endpoint = ""
        self.receiver: PushReceiver | None = None

    # -- plumbing -----------------------------------------------------------------------

    async def scenario(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        started = time.monotonic()
        try:
            detail = await fn()
            ok = True
        except Failed as e:
            ok, detail = False, str(e)
        except Exception as e:  # noqa: BLE001 - every error is a failed scenario
            ok, detail = False, f"{type(e).__name__}: {e!r}\n{traceback.format_exc(limit=4)}"
        line = {"scenario": name, "ok": ok, "detail": detail,
                "seconds": round(time.monotonic() - started, 2)}
        self.results.append(line)
        print(json.dumps(line, default=str), flush=True)

    def client(self, *, streaming: bool, token: str | None) -> Client:
        assert self.card is not None and self.http is not None
        config = ClientConfig(streaming=streaming, httpx_client=self.http,
                              supported_protocol_bindings=[self.binding])
        interceptors = [AuthInterceptor(TokenCredentials(token))] if token else []
        return ClientFactory(config).create(self.card, interceptors)

    async def send(self, message: Message, **config: Any) -> Task:
        """SendMessage (no stream); the single response must be a task."""
        assert self.blocking is not None
        req = SendMessageRequest(message=message, configuration=SendMessageConfiguration(**config))
        responses = [r async for r in self.blocking.send_message(req)]
        check(len(responses) == 1, f"SendMessage gave {len(responses)} responses")
        check(responses[0].HasField("task"), f"SendMessage answered {as_json(responses[0])}, not a task")
        return responses[0].task

    async def get(self, task_id: str, history_length: int | None = None) -> Task:
        assert self.blocking is not None
        req = GetTaskRequest(id=task_id)
        if history_length is not None:
            req.history_length = history_length
        return await self.blocking.get_task(req)

    async def wait_state(self, task_id: str, states: set[int]) -> Task:
        deadline = time.monotonic() + self.timeout
        while True:
            task = await self.get(task_id)
            if task.status.state in states:
                return task
            if time.monotonic() > deadline:
                raise Failed(f"task {task_id} still {state_name(task.status.state)} after {self.timeout}s")
            await asyncio.sleep(0.2)

    async def start_long(self) -> Task:
        """A long-running task, returned at once (returnImmediately)."""
        task = await self.send(text_message("long", message_id=f"{LONG_RUNNING}-{uuid.uuid4()}"),
                               return_immediately=True)
        check(task.status.state not in TERMINAL,
              f"returnImmediately gave a task already {state_name(task.status.state)}")
        return task

    # -- scenarios ----------------------------------------------------------------------

    async def card_scenario(self) -> dict:
        # The card is public: resolved with no token and no A2A-Version.
        async with httpx.AsyncClient(timeout=self.timeout) as plain:
            card = await A2ACardResolver(plain, self.args.card_url, agent_card_path="").get_agent_card()
        self.card = card
        for field in ("name", "description", "version"):
            check(bool(getattr(card, field)), f"card has no {field}")
        ifaces = {(i.protocol_binding, i.protocol_version): i.url for i in card.supported_interfaces}
        for binding in BINDINGS.values():
            check((binding, "1.0") in ifaces, f"no {binding} interface with protocolVersion 1.0: {ifaces}")
        check(card.capabilities.streaming, "capabilities.streaming is not true")
        check(card.capabilities.push_notifications, "capabilities.pushNotifications is not true")
        check("echo" in [s.id for s in card.skills], f"no skill echo in {[s.id for s in card.skills]}")
        check(bool(card.default_input_modes) and bool(card.default_output_modes), "no default input/output modes")
        bearer = [n for n, s in card.security_schemes.items()
                  if s.HasField("http_auth_security_scheme")
                  and s.http_auth_security_scheme.scheme.lower() == "bearer"]
        check(bool(bearer), f"no HTTP bearer security scheme: {as_json(card).get('securitySchemes')}")
        # The SDK's AuthInterceptor sends the token only for a scheme the card requires.
        required = [n for r in card.security_requirements for n in r.schemes]
        check(any(n in bearer for n in required),
              f"securityRequirements {required} name no bearer scheme {bearer}: the SDK would send no token")
        self.endpoint = ifaces[(self.binding, "1.0")]
        return {"name": card.name, "interfaces": {f"{b}/{v}": u for (b, v), u in ifaces.items()},
                "endpoint": self.endpoint, "bearer": bearer}

    async def node_card_scenario(self) -> dict:
        m = re.match(r"^(.*)/a2a/[^/]+/\.well-known/agent-card\.json$", self.args.card_url)
        node_url = self.args.node_card_url or (m and f"{m.group(1)}/.well-known/agent-card.json")
        if not node_url:
            return {"skipped": "no --node-card-url and the card URL is not <base>/a2a/<agent>/..."}
        async with httpx.AsyncClient(timeout=self.timeout) as plain:
            card = await A2ACardResolver(plain, node_url, agent_card_path="").get_agent_card()
        check(bool(card.name), "node card has no name")
        return {"url": node_url, "name": card.name,
                "interfaces": [f"{i.protocol_binding} {i.url}" for i in card.supported_interfaces],
                "skills": [s.id for s in card.skills]}

    async def send_blocking(self) -> dict:
        task = await self.send(text_message("hello from the a2a-sdk"))
        check(task.status.state == TaskState.TASK_STATE_COMPLETED,
              f"state {state_name(task.status.state)}, not COMPLETED")
        check(artifact_text(task) == "hello from the a2a-sdk", f"artifacts {as_json(task).get('artifacts')}")
        check(bool(task.id) and bool(task.context_id), "task without id or contextId")
        fetched = await self.get(task.id)
        check(fetched.status.state == TaskState.TASK_STATE_COMPLETED and artifact_text(fetched)
              == "hello from the a2a-sdk", f"GetTask gave {as_json(fetched)}")
        return {"task": task.id, "artifacts": len(task.artifacts)}

    async def send_return_immediately(self) -> dict:
        task = await self.start_long()
        first = state_name(task.status.state)
        done = await self.wait_state(task.id, TERMINAL)
        check(done.status.state == TaskState.TASK_STATE_COMPLETED,
              f"ended {state_name(done.status.state)}, not COMPLETED")
        return {"task": task.id, "returned": first, "then": state_name(done.status.state)}

    async def multi_turn(self) -> dict:
        first = await self.send(text_message("needs more", message_id=f"{INPUT_REQUIRED}-{uuid.uuid4()}"))
        check(first.status.state == TaskState.TASK_STATE_INPUT_REQUIRED,
              f"first turn {state_name(first.status.state)}, not INPUT_REQUIRED")
        second = await self.send(text_message("the missing input", task_id=first.id, context_id=first.context_id))
        check(second.id == first.id, f"second turn answered task {second.id}, not {first.id}")
        check(second.context_id == first.context_id, "contextId changed between turns")
        check(second.status.state == TaskState.TASK_STATE_COMPLETED,
              f"second turn {state_name(second.status.state)}, not COMPLETED")
        check(artifact_text(second) == "the missing input", f"artifacts {as_json(second).get('artifacts')}")
        self.multi_turn_task = second.id
        return {"task": first.id, "context": first.context_id}

    async def history_length(self) -> dict:
        task_id = getattr(self, "multi_turn_task", None)
        check(task_id is not None, "needs the multi_turn scenario's task")
        full = await self.get(task_id)
        check(len(full.history) >= 2, f"a two-turn task has {len(full.history)} history messages")
        one = await self.get(task_id, history_length=1)
        check(len(one.history) == 1, f"historyLength=1 gave {len(one.history)} messages")
        check(one.history[0].message_id == full.history[-1].message_id,
              "historyLength=1 did not give the most recent message")
        none = await self.get(task_id, history_length=0)
        check(len(none.history) == 0, f"historyLength=0 gave {len(none.history)} messages")
        return {"full": len(full.history)}

    async def stream_events(self, message: Message) -> list[StreamResponse]:
        assert self.streaming is not None
        events = []
        async with asyncio.timeout(self.timeout):
            async for ev in self.streaming.send_message(SendMessageRequest(message=message)):
                events.append(ev)
        return events

    @staticmethod
    def kinds(events: list[StreamResponse]) -> list[str]:
        out = []
        for ev in events:
            kind = ev.WhichOneof("payload")
            if kind == "status_update":
                out.append(state_name(ev.status_update.status.state).removeprefix("TASK_STATE_"))
            elif kind == "artifact_update":
                a = ev.artifact_update
                out.append(f"artifact(append={a.append},last={a.last_chunk})")
            else:
                out.append(str(kind))
        return out

    def check_stream_end(self, events: list[StreamResponse], task_id: str) -> None:
        kinds = self.kinds(events)
        check(bool(events), "no events")
        last = events[-1]
        if last.HasField("status_update"):
            check(last.status_update.task_id == task_id, "final status of another task")
            state = last.status_update.status.state
        else:
            check(last.HasField("task"), f"stream ended with {kinds[-1]}")
            state = last.task.status.state
        check(state == TaskState.TASK_STATE_COMPLETED, f"stream ended {state_name(state)}: {kinds}")

    async def stream(self) -> dict:
        events = await self.stream_events(text_message("streamed echo"))
        kinds = self.kinds(events)
        check(events[0].HasField("task"), f"first event {kinds[0]}, not the task: {kinds}")
        task_id = events[0].task.id
        self.check_stream_end(events, task_id)
        texts = [p.text for e in events if e.HasField("artifact_update") for p in e.artifact_update.artifact.parts]
        check("".join(texts) == "streamed echo", f"artifact text {texts}")
        return {"events": kinds}

    async def stream_chunked(self) -> dict:
        text = "abcdefghijk"
        # A data part is a protobuf Value: the SDK sends the number as 4.0, which the agent must
        # take as the integer 4.
        events = await self.stream_events(text_message(text, data={"chunkSize": 4}))
        kinds = self.kinds(events)
        check(events[0].HasField("task"), f"first event {kinds[0]}, not the task: {kinds}")
        self.check_stream_end(events, events[0].task.id)
        chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
        check(len(chunks) == 3, f"{len(chunks)} artifact chunks for 11 characters by 4: {kinds}")
        check(len({c.artifact.artifact_id for c in chunks}) == 1, "chunks of different artifacts")
        # The first chunk creates the artifact (a2a-sdk's own server refuses append=true for an
        # artifact it has not seen); the later ones append to it.
        check(not chunks[0].append, f"the first chunk has append=true: {kinds}")
        check(all(c.append for c in chunks[1:]), f"a later chunk without append: {kinds}")
        check(chunks[-1].last_chunk and not any(c.last_chunk for c in chunks[:-1]),
              f"lastChunk not on the last chunk only: {kinds}")
        got = "".join(p.text for c in chunks for p in c.artifact.parts)
        check(got == text, f"chunks {got!r}")
        task = await self.get(events[0].task.id)
        check(artifact_text(task) == text, f"stored artifact {artifact_text(task)!r}")
        return {"events": kinds}

    async def list_tasks(self) -> dict:
        assert self.blocking is not None
        first = await self.send(text_message("list one"))
        ids = {first.id}
        for n in ("two", "three"):
            t = await self.send(text_message(f"list {n}", context_id=first.context_id))
            check(t.context_id == first.context_id, "contextId not kept for a new task in it")
            ids.add(t.id)
        check(len(ids) == 3, "contextId without taskId did not start new tasks")
        page1 = await self.blocking.list_tasks(ListTasksRequest(context_id=first.context_id, page_size=2))
        check(len(page1.tasks) == 2, f"pageSize 2 gave {len(page1.tasks)} tasks")
        check(bool(page1.next_page_token), "no nextPageToken with a task left")
        check(page1.total_size == 3, f"totalSize {page1.total_size}, not 3")
        page2 = await self.blocking.list_tasks(ListTasksRequest(
            context_id=first.context_id, page_size=2, page_token=page1.next_page_token))
        check(len(page2.tasks) == 1, f"second page has {len(page2.tasks)} tasks")
        check(not page2.next_page_token, f"last page has nextPageToken {page2.next_page_token!r}")
        got = [t.id for t in list(page1.tasks) + list(page2.tasks)]
        check(sorted(got) == sorted(ids), f"listed {got}, created {sorted(ids)}")
        check(all(t.context_id == first.context_id for t in list(page1.tasks) + list(page2.tasks)),
              "a task of another context")
        return {"context": first.context_id, "pages": [len(page1.tasks), len(page2.tasks)],
                "pageSize": page1.page_size}

    async def cancel(self) -> dict:
        assert self.blocking is not None
        task = await self.start_long()
        canceled = await self.blocking.cancel_task(CancelTaskRequest(id=task.id))
        returned = state_name(canceled.status.state)
        if canceled.status.state != TaskState.TASK_STATE_CANCELED:
            canceled = await self.wait_state(task.id, TERMINAL)
        check(canceled.status.state == TaskState.TASK_STATE_CANCELED,
              f"ended {state_name(canceled.status.state)}, not CANCELED")
        again = await self.get(task.id)
        check(again.status.state == TaskState.TASK_STATE_CANCELED, "GetTask after cancel not CANCELED")
        try:
            await self.blocking.cancel_task(CancelTaskRequest(id=task.id))
        except TaskNotCancelableError as e:
            second = f"TaskNotCancelableError: {e.message}"
        else:
            raise Failed("cancelling a canceled task succeeded")
        return {"task": task.id, "cancel_returned": returned, "second_cancel": second}

    async def subscribe(self) -> dict:
        assert self.streaming is not None
        task = await self.start_long()
        events = []
        async with asyncio.timeout(self.timeout):
            async for ev in self.streaming.subscribe(SubscribeToTaskRequest(id=task.id)):
                events.append(ev)
        kinds = self.kinds(events)
        check(bool(events) and events[0].HasField("task"), f"first event is not the task: {kinds}")
        check(events[0].task.id == task.id, "subscribed to another task")
        check(events[0].task.status.state not in TERMINAL, f"task already {kinds[0]} when subscribed")
        self.check_stream_end(events, task.id)
        return {"task": task.id, "events": kinds}

    async def subscribe_terminal(self) -> dict:
        assert self.streaming is not None
        task = await self.send(text_message("already done"))
        try:
            async with asyncio.timeout(self.timeout):
                events = [ev async for ev in self.streaming.subscribe(SubscribeToTaskRequest(id=task.id))]
        except UnsupportedOperationError as e:
            return {"error": f"UnsupportedOperationError: {e.message}"}
        raise Failed(f"subscribing to a COMPLETED task gave {self.kinds(events)}, not UnsupportedOperationError")

    async def task_not_found(self) -> dict:
        assert self.blocking is not None
        missing = f"no-such-task-{uuid.uuid4()}"
        out = {}
        for name, call in (("GetTask", lambda: self.get(missing)),
                           ("CancelTask", lambda: self.blocking.cancel_task(CancelTaskRequest(id=missing)))):
            try:
                await call()
            except TaskNotFoundError as e:
                out[name] = f"TaskNotFoundError: {e.message}"
            except A2AError as e:
                raise Failed(f"{name} of a missing task raised {e!r}, not TaskNotFoundError") from e
            else:
                raise Failed(f"{name} of a missing task succeeded")
        return out

    def check_push_posts(self, posts: list[dict], task_id: str, token: str, credentials: str) -> list[str]:
        seen = []
        for p in posts:
            h = {k.lower(): v for k, v in p["headers"].items()}
            check(h.get("x-a2a-notification-token") == token,
                  f"push without X-A2A-Notification-Token {token!r}: headers {p['headers']}")
            check(h.get("authorization") == f"Bearer {credentials}",
                  f"push without Authorization: Bearer <credentials>: headers {p['headers']}")
            body = p["body"]
            check(isinstance(body, dict), f"push body is not a JSON object: {p['raw'][:200]}")
            kinds = [k for k in ("task", "message", "statusUpdate", "artifactUpdate") if k in body]
            check(len(kinds) == 1, f"push body is not one StreamResponse: {body}")
            json_format.ParseDict(body, StreamResponse())  # raises on a malformed one
            ids = {body[kinds[0]].get("taskId"), body[kinds[0]].get("id")}
            check(task_id in ids, f"push about another task: {body}")
            seen.append(kinds[0] if kinds[0] != "statusUpdate"
                        else body["statusUpdate"]["status"]["state"].removeprefix("TASK_STATE_"))
        return seen

    async def push_config(self) -> dict:
        assert self.blocking is not None and self.receiver is not None
        path, token, creds = f"/hook/{uuid.uuid4()}", f"tok-{uuid.uuid4()}", f"cred-{uuid.uuid4()}"
        task = await self.start_long()
        created = await self.blocking.create_task_push_notification_config(TaskPushNotificationConfig(
            task_id=task.id, url=self.receiver.url(path), token=token,
            authentication=AuthenticationInfo(scheme="Bearer", credentials=creds)))
        check(bool(created.id), f"created config has no id: {as_json(created)}")
        check(created.task_id == task.id and created.url == self.receiver.url(path),
              f"created config {as_json(created)}")
        got = await self.blocking.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task.id, id=created.id))
        check(got.id == created.id and got.url == created.url, f"get gave {as_json(got)}")
        listed = await self.blocking.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task.id))
        check([c.id for c in listed.configs] == [created.id], f"list gave {as_json(listed)}")
        posts = await self.receiver.wait_final(path, task.id, self.timeout)
        seen = self.check_push_posts(posts, task.id, token, creds)
        await self.blocking.delete_task_push_notification_config(
            DeleteTaskPushNotificationConfigRequest(task_id=task.id, id=created.id))
        listed = await self.blocking.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task.id))
        check(len(listed.configs) == 0, f"list after delete gave {as_json(listed)}")
        try:
            await self.blocking.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task.id, id=created.id))
        except A2AError as e:
            after_delete = f"{type(e).__name__}: {e.message}"
        else:
            raise Failed("get of a deleted config succeeded")
        return {"task": task.id, "config": created.id, "pushes": seen, "get_after_delete": after_delete}

    async def push_in_send(self) -> dict:
        assert self.receiver is not None
        path, token, creds = f"/hook/{uuid.uuid4()}", f"tok-{uuid.uuid4()}", f"cred-{uuid.uuid4()}"
        task = await self.send(
            text_message(f"pushed {uuid.uuid4()}", message_id=f"{LONG_RUNNING}-{uuid.uuid4()}"),
            return_immediately=True,
            task_push_notification_config=TaskPushNotificationConfig(
                url=self.receiver.url(path), token=token,
                authentication=AuthenticationInfo(scheme="Bearer", credentials=creds)))
        posts = await self.receiver.wait_final(path, task.id, self.timeout)
        return {"task": task.id, "pushes": self.check_push_posts(posts, task.id, token, creds)}

    async def raw(self, headers: dict[str, str]) -> httpx.Response:
        """GetTask of a missing task, by hand (raw httpx), with exactly `headers`."""
        missing = f"no-such-task-{uuid.uuid4()}"
        async with httpx.AsyncClient(timeout=self.timeout) as h:
            if self.binding == "JSONRPC":
                return await h.post(self.endpoint, headers=headers, json={
                    "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": missing}})
            return await h.get(f"{self.endpoint.rstrip('/')}/tasks/{missing}", headers=headers)

    def error_of(self, resp: httpx.Response) -> tuple[Any, Any, dict]:
        """(JSON-RPC code | HTTP status, ErrorInfo reason, error object) of an error answer."""
        try:
            body = resp.json()
        except ValueError:
            raise Failed(f"HTTP {resp.status_code}, body not JSON: {resp.text[:200]}") from None
        err = body.get("error") if isinstance(body, dict) else None
        check(isinstance(err, dict), f"HTTP {resp.status_code} without an error object: {body}")
        details = err.get("data" if self.binding == "JSONRPC" else "details") or []
        reasons = [d.get("reason") for d in details if isinstance(d, dict)
                   and d.get("@type") == "type.googleapis.com/google.rpc.ErrorInfo"]
        code = err.get("code") if self.binding == "JSONRPC" else resp.status_code
        return code, (reasons[0] if reasons else None), err

    async def version_header(self) -> dict:
        auth = {"Authorization": f"Bearer {self.args.token}"}
        out = {"how": "raw httpx: the SDK always sends A2A-Version"}
        for label, headers in (("missing", auth), ("99.0", {**auth, "A2A-Version": "99.0"})):
            resp = await self.raw(headers)
            code, reason, err = self.error_of(resp)
            if self.binding == "JSONRPC":
                check(code == -32009, f"A2A-Version {label}: JSON-RPC error {err}, not -32009")
            else:
                check(code == 400, f"A2A-Version {label}: HTTP {code}, not 400")
                check(reason == "VERSION_NOT_SUPPORTED",
                      f"A2A-Version {label}: ErrorInfo reason {reason!r}, not VERSION_NOT_SUPPORTED: {err}")
            out[label] = {"http": resp.status_code, "code": code, "reason": reason,
                          "status": err.get("status")}
        resp = await self.raw({**auth, "A2A-Version": "1.0"})
        code, reason, err = self.error_of(resp)
        expected = -32001 if self.binding == "JSONRPC" else 404
        check(code == expected, f"A2A-Version 1.0, missing task: {code} {err}, not {expected}")
        if self.binding != "JSONRPC":
            check(reason == "TASK_NOT_FOUND", f"missing task: reason {reason!r}, not TASK_NOT_FOUND")
        out["1.0"] = {"http": resp.status_code, "code": code, "reason": reason}
        return out

    async def auth(self) -> dict:
        out = {}
        for label, headers in (("no token", {"A2A-Version": "1.0"}),
                               ("wrong token", {"A2A-Version": "1.0", "Authorization": "Bearer not-the-token"})):
            resp = await self.raw(headers)
            check(resp.status_code == 401, f"{label}: HTTP {resp.status_code}, not 401: {resp.text[:200]}")
            out[label] = {"http": 401, "www-authenticate": resp.headers.get("www-authenticate")}
        out["how"] = "raw httpx, then the SDK with no AuthInterceptor"
        anonymous = self.client(streaming=False, token=None)
        try:
            await anonymous.get_task(GetTaskRequest(id=f"x-{uuid.uuid4()}"))
        except A2AClientError as e:
            check("401" in str(e), f"SDK without a token raised {e!r}, not an HTTP 401")
            out["sdk"] = f"{type(e).__name__}: {e}"[:160]
        except A2AError as e:
            raise Failed(f"SDK without a token raised {e!r}, not an HTTP 401") from e
        else:
            raise Failed("SDK without a token got an answer")
        return out

    # -- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        await self.scenario("card", self.card_scenario)
        if self.card is None:
            print(json.dumps({"summary": True, "binding": self.args.binding, "ok": False,
                              "failed": ["card"], "seconds": 0}), flush=True)
            return 1
        await self.scenario("node_card", self.node_card_scenario)
        self.http = httpx.AsyncClient(timeout=self.timeout)
        self.blocking = self.client(streaming=False, token=self.args.token)
        self.streaming = self.client(streaming=True, token=self.args.token)
        self.receiver = PushReceiver()
        started = time.monotonic()
        try:
            for name, fn in (
                ("send_blocking", self.send_blocking),
                ("send_return_immediately", self.send_return_immediately),
                ("multi_turn", self.multi_turn),
                ("history_length", self.history_length),
                ("stream", self.stream),
                ("stream_chunked", self.stream_chunked),
                ("list_tasks", self.list_tasks),
                ("cancel", self.cancel),
                ("subscribe", self.subscribe),
                ("subscribe_terminal", self.subscribe_terminal),
                ("task_not_found", self.task_not_found),
                ("push_config", self.push_config),
                ("push_in_send", self.push_in_send),
                ("version_header", self.version_header),
                ("auth", self.auth),
            ):
                if self.args.only and name not in self.args.only:
                    continue
                await self.scenario(name, fn)
        finally:
            self.receiver.close()
            await self.http.aclose()
        failed = [r["scenario"] for r in self.results if not r["ok"]]
        print(json.dumps({"summary": True, "binding": self.args.binding, "ok": not failed,
                          "failed": failed, "seconds": round(time.monotonic() - started, 2)}), flush=True)
        return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card-url", required=True, help="the echo agent's card, <base>/a2a/echo/.well-known/agent-card.json")
    p.add_argument("--token", required=True, help="bearer token for the A2A endpoints")
    p.add_argument("--binding", required=True, choices=sorted(BINDINGS))
    p.add_argument("--node-card-url", help="the node's own card (default: derived from --card-url)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-wait limit in seconds")
    p.add_argument("--only", nargs="*", help="run only these scenarios (card always runs)")
    return asyncio.run(Runner(p.parse_args()).run())


if __name__ == "__main__":
    sys.exit(main())
