"""Fetching missing prefetch data from the client's FHIR server.

One pooled :class:`requests.Session` per process; the keys of one request are fetched
concurrently; search results are followed through their ``next`` links up to a page cap.
``fhirServer`` must be on the allow-list (:class:`AllowedServers`). The bearer token is only
ever sent to ``fhirServer`` (``next`` links elsewhere are not followed, redirects never are)
and is never logged or kept. Each response is held to the same input limits as a request.

What one request may cost, whatever the server does:

- time: one deadline for all the fetches of the request (``timeout``), checked between the
  chunks of every streamed body too, so a server that trickles a byte at a time is cut off
  (its connection closed) once the deadline passes, not after each read's timeout;
- bytes: ``max_bytes`` per response and ``max_request_bytes`` for all the responses of the
  request together (a server sending 18 MB Bundles for every key no longer fills memory);
- threads: each ``fhirServer`` (scheme, host and port) has its own fetch threads,
  ``server_concurrency`` of them per process, so one slow server queues only its own fetches
  and never takes the threads another server's fetches need.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter

from .observer import Observer
from .prefetch import KeyResult, bundle_resources, next_link
from .validation import InputLimits, field_path, limit_violation

log = logging.getLogger("cds_hooks.fhir")


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 3.0  # total budget for all fetches of one request, seconds
    max_pages: int = 20  # per key, including the first
    max_bytes: int = 20 * 1024 * 1024  # per response
    max_request_bytes: int = 20 * 1024 * 1024  # all the responses of one request together
    server_concurrency: int = 8  # fetches in flight to one fhirServer, per process
    allowed_servers: tuple[str, ...] = ("https://",)  # fhirServer URL prefixes
    limits: InputLimits = field(default_factory=InputLimits)  # max_entries: per key


def _split(url: str) -> tuple[str, str | None, int | None, str]:
    """(scheme, host, port, path without trailing slash) of an http(s) URL without user
    info; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" in parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL without user info")
    return parts.scheme, parts.hostname, parts.port, parts.path.rstrip("/")


class AllowedServers:
    """The FHIR servers the service may call, as URL prefixes compared part by part:
    ``https://`` allows any https server; ``https://fhir.example.org/r4`` that host on any
    port, at or under that path; ``http://127.0.0.1:8080`` that host on that port."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = [_split(prefix) for prefix in prefixes]

    def allows(self, url: str) -> bool:
        try:
            scheme, host, port, path = _split(url)
        except ValueError:
            return False
        return bool(host) and any(
            scheme == p_scheme
            and p_host in (None, host)
            and p_port in (None, port)
            and (path == p_path or path.startswith(p_path + "/"))
            for p_scheme, p_host, p_port, p_path in self.prefixes
        )


class FhirClient:
    """Reads from a client's FHIR server on behalf of one CDS request at a time: the HTTP
    :class:`~cds_hooks.source.FhirSource`."""

    def __init__(
        self, settings: FetchSettings, pool_size: int = 16, observer: Observer | None = None
    ):
        self.settings = settings
        self.observer = observer or Observer()
        self.allowed = AllowedServers(settings.allowed_servers)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._pools: OrderedDict[str, ThreadPoolExecutor] = OrderedDict()
        self._pools_lock = threading.Lock()

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    def _pool(self, base: str) -> ThreadPoolExecutor:
        """The fetch threads of ``base``'s server (created on first use, in the process that
        uses them: no thread survives gunicorn's fork). The least recently used of more than
        :data:`MAX_SERVERS` servers is let go once its fetches end."""
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
        with self._pools_lock:
            pool = self._pools.get(origin)
            if pool is None:
                pool = ThreadPoolExecutor(
                    self.settings.server_concurrency, thread_name_prefix="fhir"
                )
                self._pools[origin] = pool
                if len(self._pools) > MAX_SERVERS:
                    self._pools.popitem(last=False)[1].shutdown(wait=False)
            self._pools.move_to_end(origin)
            return pool

    def allows(self, server: str) -> bool:
        return self.allowed.allows(server)

    def complete(
        self,
        base: str,
        token: str | None,
        wanted: dict[str, str],
        partial: dict[str, KeyResult],
    ) -> dict[str, KeyResult]:
        """Fetch every key in ``wanted`` (key → relative URL) and finish every paged result
        in ``partial``, all in parallel within the time budget."""
        deadline = time.monotonic() + self.settings.timeout
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        base = base.rstrip("/") + "/"
        started = time.monotonic()
        budget = Budget(deadline, self.settings.max_request_bytes)
        pool = self._pool(base)
        jobs = {
            key: pool.submit(self._timed, base, url, headers, budget, None)
            for key, url in wanted.items()
        }
        for key, result in partial.items():
            jobs[key] = pool.submit(self._timed, base, result.next_url, headers, budget, result)
        done, _ = wait(jobs.values(), timeout=max(0.0, deadline - time.monotonic()) + 0.05)
        out: dict[str, KeyResult] = {}
        for key, future in jobs.items():
            if future in done:
                out[key], seconds = future.result()
                self.observer.fetch_done(key, _outcome(out[key]), seconds)
            else:
                future.cancel()
                out[key] = _degrade(partial.get(key), "time budget exceeded")
                self.observer.fetch_done(key, "timeout", time.monotonic() - started)
        return out

    def _timed(self, *args: Any) -> tuple[KeyResult, float]:
        """:meth:`_fetch_key`, and the seconds it took."""
        started = time.monotonic()
        result = self._fetch_key(*args)
        return result, time.monotonic() - started

    def _fetch_key(
        self,
        base: str,
        url: str,
        headers: dict[str, str],
        budget: Budget,
        partial: KeyResult | None,
    ) -> KeyResult:
        resources: list[dict[str, Any]] = list(partial.resources) if partial else []
        pages = 1 if partial else 0
        target: str | None = urljoin(base, url)
        first = partial is None
        limits = self.settings.limits
        while target:
            if pages >= self.settings.max_pages:
                return KeyResult(
                    "fetched", resources, complete=False, reason=f"stopped after {pages} pages"
                )
            if not _same_server(base, target):
                return _degrade_with(resources, "next link points outside fhirServer")
            remaining = budget.deadline - time.monotonic()
            if remaining <= 0:
                return _degrade_with(resources, "time budget exceeded")
            try:
                body, status = self._get(target, headers, budget)
            except requests.RequestException as exc:
                log.info("fhir fetch failed", extra={"reason": type(exc).__name__})
                return _degrade_with(resources, f"FHIR server unreachable ({type(exc).__name__})")
            except ValueError as exc:
                return _degrade_with(resources, str(exc))
            pages += 1
            if first and status == 404:
                return KeyResult("empty")
            if status != 200:
                redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
                return _degrade_with(resources, f"FHIR server answered HTTP {status}{redirect}")
            violation = limit_violation(body, limits)
            if violation is not None:
                path, problem = violation
                return _degrade_with(resources, f"FHIR response {field_path(path)} {problem}")
            kind = body.get("resourceType") if isinstance(body, dict) else None
            if kind == "OperationOutcome":
                return _degrade_with(resources, "FHIR server returned an OperationOutcome")
            if kind == "Bundle":
                resources.extend(bundle_resources(body))
                if len(resources) > limits.max_entries:
                    return KeyResult(
                        "fetched",
                        resources[: limits.max_entries],
                        complete=False,
                        reason=f"stopped at {limits.max_entries} resources",
                    )
                target = next_link(body)
                target = urljoin(base, target) if target else None
            elif kind:
                resources.append(body)
                target = None
            else:
                return _degrade_with(resources, "FHIR server returned something that is not FHIR")
            first = False
        return KeyResult("fetched", resources)

    def _get(self, url: str, headers: dict[str, str], budget: Budget) -> tuple[Any, int]:
        """GET ``url``: (the parsed JSON body, 200) or (None, the status). ValueError when the
        body breaks a limit or is not JSON; the connection is closed as soon as it does, so
        the server stops sending."""
        timeout = max(0.001, budget.deadline - time.monotonic())
        with self.session.get(
            url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
        ) as response:
            if response.status_code != 200:
                return None, response.status_code
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.settings.max_bytes:
                raise ValueError("FHIR response larger than the configured limit")
            chunks, size = [], 0
            # read1: whatever has arrived (not a full 64 kB), so the deadline is looked at
            # between any two packets of a trickling server
            try:
                while chunk := response.raw.read1(65536, decode_content=True):
                    size += len(chunk)
                    if size > self.settings.max_bytes:
                        raise ValueError("FHIR response larger than the configured limit")
                    budget.spend(len(chunk))
                    chunks.append(chunk)
            except urllib3.exceptions.ReadTimeoutError:  # the socket waited out the budget
                raise ValueError("time budget exceeded") from None
            except urllib3.exceptions.HTTPError as exc:  # what requests would have wrapped
                raise requests.ConnectionError(type(exc).__name__) from None
            try:
                return orjson.loads(b"".join(chunks)), 200
            except orjson.JSONDecodeError:
                raise ValueError("FHIR server returned invalid JSON") from None


#: fhirServers whose fetch threads a process keeps (the least recently used beyond go)
MAX_SERVERS = 16


class Budget:
    """What the fetches of one request may still spend: time until ``deadline`` (monotonic)
    and ``max_bytes`` in all; shared by the request's fetch threads."""

    def __init__(self, deadline: float, max_bytes: int):
        self.deadline = deadline
        self._left = max_bytes
        self._lock = threading.Lock()

    def spend(self, size: int) -> None:
        """Count ``size`` bytes just read; ValueError when the deadline passed or the bytes
        ran out (the caller then drops the connection)."""
        if time.monotonic() > self.deadline:
            raise ValueError("time budget exceeded")
        with self._lock:
            self._left -= size
            if self._left < 0:
                raise ValueError("FHIR responses of this request larger than the configured limit")


def _same_server(base: str, url: str) -> bool:
    b, u = urlsplit(base), urlsplit(url)
    return (b.scheme, b.netloc) == (u.scheme, u.netloc) and u.path.startswith(b.path.rstrip("/"))


def _outcome(result: KeyResult) -> str:
    """The observer's outcome (:data:`cds_hooks.observer.FETCH_OUTCOMES`) of a fetched key."""
    if result.status == "empty":
        return "empty"
    if result.status == "unavailable":
        return "timeout" if result.reason == "time budget exceeded" else "failed"
    return "ok" if result.complete else "incomplete"


def _degrade_with(resources: list[dict[str, Any]], reason: str) -> KeyResult:
    if resources:
        return KeyResult("fetched", resources, complete=False, reason=reason)
    return KeyResult("unavailable", reason=reason)


def _degrade(partial: KeyResult | None, reason: str) -> KeyResult:
    return _degrade_with(partial.resources if partial else [], reason)
