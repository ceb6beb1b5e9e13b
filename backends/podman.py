"""Podman backend: each model server is a container, driven through Podman's
libpod REST API (``podman system service``) with aiohttp.

aiohttp rather than podman-py: the calls are natively async (no threads), the
few endpoints used are typed here, and podman-py's list results break on
``.status``. Rootful podman's socket is the default
(``unix:///run/podman/podman.sock``; ``CONTAINER_HOST`` overrides it, as for
the podman CLI); ``tcp://`` works too.

Ownership is the Docker backend's: ``swapvisor.*`` labels on every container,
a stale container of this instance holding the wanted name is removed, stop
always removes. GPUs are CDI devices (``nvidia.com/gpu=all`` or ``=<id>``),
which needs the NVIDIA Container Toolkit's CDI spec on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

import aiohttp
import yarl

from backends.base import (
    BackendError,
    BackendStartError,
    BackendUnavailable,
    ExitInfo,
    Handle,
    Health,
    LaunchSpec,
)
from backends.containers import (
    LABEL_INSTANCE,
    LOG_DRAIN_S,
    ExitLog,
    FrameDecoder,
    LogFeed,
    check_instance,
    container_command,
    container_env,
    container_name,
    container_spec,
    exit_info,
    image_error,
    ownership_labels,
)
from backends.probe import HttpProbe, join_url
from backends.specs import ContainerSpec, parse_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from backends.base import Backend, SupportsOrphanCleanup

DEFAULT_URL = "unix:///run/podman/podman.sock"
API_PREFIX = "/v4.0.0/libpod"  # served by podman 4.x and 5.x alike
API_TIMEOUT_S = 60.0
WAIT_SLACK_S = 30.0
LIST_ATTEMPTS = 5
LIST_RETRY_S = 0.05
# An exit watch lasts the container's life: let libpod poll it gently.
WATCH_INTERVAL = "200ms"
WATCH_RETRY_S = 1.0
CDI_GPU = "nvidia.com/gpu"
_NETNS_MODES = ("host", "none", "private", "slirp4netns", "pasta")

JSON = dict[str, object]


class _NameConflict(Exception):
    """The wanted container name is taken."""


@dataclass(frozen=True, slots=True)
class _State:
    running: bool
    exit_code: int
    stop_signal: str | None
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Summary:
    id: str
    name: str


class _Libpod:
    """The libpod endpoints swapvisor uses. Unreachable → BackendUnavailable."""

    def __init__(self, url: str, timeout_s: float) -> None:
        scheme, _, rest = url.partition("://")
        if scheme not in ("unix", "tcp", "http"):
            raise BackendUnavailable(
                f"Podman API URL {url}: use unix:///path/podman.sock or tcp://host:port"
            )
        self.url = url
        self._socket = rest if scheme == "unix" else None
        self._base = ("http://podman" if scheme == "unix" else f"http://{rest}").rstrip(
            "/"
        ) + API_PREFIX
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self._socket)
                if self._socket is not None
                else aiohttp.TCPConnector()
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout
            )
        return self._session

    def _url(self, path: str) -> yarl.URL:
        # encoded=True keeps "%2F" in image names as sent.
        return yarl.URL(self._base + path, encoded=True)

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"Podman API at {self.url} is unreachable: {exc}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JSON | None = None,
        timeout_s: float | None = -1.0,
    ) -> tuple[int, bytes]:
        """One call; ``timeout_s`` None waits as long as the engine takes."""
        timeout = (
            self._timeout
            if timeout_s == -1.0
            else aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        )
        try:
            async with self._client().request(
                method, self._url(path), params=params, json=body, timeout=timeout
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from exc

    async def ping(self) -> None:
        status, _ = await self.request("GET", "/_ping")
        if status != 200:
            raise BackendUnavailable(
                f"Podman API at {self.url}: /_ping answered {status}"
            )

    async def image_present(self, image: str) -> bool:
        status, data = await self.request(
            "GET", f"/images/{quote(image, safe='')}/exists"
        )
        if status not in (204, 404):
            raise BackendUnavailable(
                f"Podman API at {self.url}: {_message(data, status)}"
            )
        return status == 204

    async def pull(self, image: str) -> None:
        """Pull ``image``; raises BackendStartError with the engine's reason."""
        status, data = await self.request(
            "POST",
            "/images/pull",
            params={"reference": image, "quiet": "true"},
            timeout_s=None,
        )
        if status != 200:
            raise BackendStartError(_message(data, status))
        # A failed pull is reported inside the 200 stream of JSON objects.
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("error"):
                    raise BackendStartError(str(event["error"]).strip())

    async def create(self, body: JSON) -> str:
        status, data = await self.request("POST", "/containers/create", body=body)
        if status == 201:
            return str(_json(data).get("Id"))
        text = _message(data, status)
        if status == 409 or "already in use" in text:
            raise _NameConflict(text)
        if status == 404 or "image not known" in text:
            raise BackendStartError(f"image {body.get('image')} not found: {text}")
        raise BackendStartError(
            f"could not create container {body.get('name')}: {text}"
        )

    async def start(self, ref: str) -> None:
        status, data = await self.request("POST", f"/containers/{ref}/start")
        if status not in (204, 304):
            raise BackendStartError(_message(data, status))

    async def inspect(self, ref: str) -> _State | None:
        status, data = await self.request("GET", f"/containers/{ref}/json")
        if status == 404:
            return None
        if status != 200:
            raise BackendUnavailable(
                f"Podman API at {self.url}: inspect failed: {_message(data, status)}"
            )
        info = _json(data)
        state = _dict(info.get("State"))
        config = _dict(info.get("Config"))
        stop_signal = config.get("StopSignal")
        return _State(
            running=bool(state.get("Running")),
            exit_code=_int(state.get("ExitCode")),
            stop_signal=str(stop_signal) if stop_signal else None,
            labels={str(k): str(v) for k, v in _dict(config.get("Labels")).items()},
        )

    async def kill(self, ref: str, sig: str) -> None:
        """Send ``sig``; a container that is already gone or stopped is fine."""
        status, data = await self.request(
            "POST", f"/containers/{ref}/kill", params={"signal": sig}
        )
        if status in (200, 204, 404):
            return
        state = await self.inspect(ref)
        if state is not None and state.running:
            raise BackendError(
                f"could not signal container {ref[:12]}: {_message(data, status)}"
            )

    async def wait(
        self, ref: str, timeout_s: float | None, interval: str = "10ms"
    ) -> int | None:
        """Until the container stops: its exit code, None if it is gone.

        libpod polls the state every ``interval`` (250 ms by default: too slow
        for a stop, which waits briefly; a long watch can afford more).
        """
        status, data = await self.request(
            "POST",
            f"/containers/{ref}/wait",
            params={"interval": interval},
            timeout_s=timeout_s,
        )
        if status == 404:
            return None
        if status != 200:
            raise BackendError(
                f"waiting for {ref[:12]} failed: {_message(data, status)}"
            )
        return int(data.strip() or b"0")

    async def remove(self, ref: str) -> None:
        """Remove with its anonymous volumes, killing it at once if it runs
        (without ``timeout=0`` a forced remove waits the stop timeout, 10 s)."""
        status, data = await self.request(
            "DELETE",
            f"/containers/{ref}",
            params={"force": "true", "v": "true", "timeout": "0"},
        )
        if status not in (200, 204, 404):
            raise BackendError(
                f"could not remove container {ref[:12]}: {_message(data, status)}"
            )

    async def list_owned(self, instance: str) -> list[_Summary]:
        filters = json.dumps({"label": [f"{LABEL_INSTANCE}={instance}"]})
        params = {"all": "true", "filters": filters}
        status, data = await self.request("GET", "/containers/json", params=params)
        for _ in range(LIST_ATTEMPTS - 1):
            if status == 200:
                break
            # Podman fails a whole listing when a container vanishes while it
            # is being listed ("container not known"); ask again.
            await asyncio.sleep(LIST_RETRY_S)
            status, data = await self.request("GET", "/containers/json", params=params)
        if status != 200:
            raise BackendUnavailable(
                f"Podman API at {self.url}: list failed: {_message(data, status)}"
            )
        rows = json.loads(data) if data.strip() else []
        out: list[_Summary] = []
        for row in rows if isinstance(rows, list) else []:
            names = row.get("Names") or [row.get("Id", "")]
            out.append(_Summary(id=str(row["Id"]), name=str(names[0])))
        return out

    async def logs(self, ref: str) -> AsyncIterator[bytes]:
        """stdout and stderr from the start, following, as raw payloads."""
        params = {"follow": "true", "stdout": "true", "stderr": "true"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with self._client().get(
                self._url(f"/containers/{ref}/logs"), params=params, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    return
                decoder = FrameDecoder()
                async for chunk in resp.content.iter_any():
                    for payload in decoder.feed(chunk):
                        yield payload
        except (aiohttp.ClientError, OSError):
            return  # the engine closed the stream: the container is gone

    async def all_logs(self, ref: str) -> bytes:
        """Everything the container has written so far (stdout and stderr)."""
        status, data = await self.request(
            "GET",
            f"/containers/{ref}/logs",
            params={"stdout": "true", "stderr": "true"},
        )
        if status != 200:
            return b""
        return b"".join(FrameDecoder().feed(data))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json(data: bytes) -> JSON:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _message(data: bytes, status: int) -> str:
    doc = _json(data)
    text = doc.get("message") or doc.get("cause") or data.decode(errors="replace")
    return f"{str(text).strip() or 'no details'} (HTTP {status})"


def cdi_devices(gpus: str | int | tuple[str, ...] | None) -> list[str]:
    """GPU requests as CDI device names: all, the first N, or the listed ids."""
    if gpus is None:
        return []
    if gpus == "all":
        return [f"{CDI_GPU}=all"]
    if isinstance(gpus, int):
        # CDI has no "any N GPUs": take indices 0..N-1 (placement picks ids).
        return [f"{CDI_GPU}={i}" for i in range(gpus)]
    return [g if "=" in g else f"{CDI_GPU}={g}" for g in gpus]


def create_body(
    spec: LaunchSpec, cspec: ContainerSpec, name: str, labels: dict[str, str]
) -> JSON:
    """The libpod create request (a SpecGenerator document)."""
    body: JSON = {
        "name": name,
        "image": cspec.image,
        "labels": labels,
        "env": container_env(spec, cspec),
    }
    command = container_command(spec, cspec)
    if command:
        body["command"] = list(command)
    if cspec.entrypoint is not None:
        body["entrypoint"] = list(cspec.entrypoint)
    network = cspec.network
    if network in _NETNS_MODES:
        body["netns"] = {"nsmode": network}
    elif network.startswith("container:"):
        body["netns"] = {"nsmode": "container", "value": network.split(":", 1)[1]}
    else:
        body["netns"] = {"nsmode": "bridge"}
        if network not in ("bridge", "default"):
            body["networks"] = {network: {}}
    if cspec.ports:
        body["portmappings"] = [
            {
                "host_ip": "127.0.0.1",
                "host_port": h,
                "container_port": c,
                "protocol": "tcp",
            }
            for c, h in cspec.ports.items()
        ]
    binds = [m for m in cspec.mounts if m.is_bind]
    named = [m for m in cspec.mounts if not m.is_bind]
    if binds:
        body["mounts"] = [
            {
                "type": "bind",
                "source": m.source,
                "destination": m.target,
                "options": ["ro"] if m.read_only else [],
            }
            for m in binds
        ]
    if named:
        body["volumes"] = [
            {
                "Name": m.source,
                "Dest": m.target,
                "Options": ["ro"] if m.read_only else [],
            }
            for m in named
        ]
    devices = cdi_devices(cspec.gpu_request)
    if devices:
        body["devices"] = [{"path": d} for d in devices]
    if cspec.shm_size is not None:
        body["shm_size"] = parse_bytes(cspec.shm_size)
    if cspec.ipc is not None:
        mode, _, value = cspec.ipc.partition(":")
        body["ipcns"] = {"nsmode": mode, "value": value} if value else {"nsmode": mode}
    if cspec.user is not None:
        body["user"] = cspec.user
    if cspec.stop_signal is not None:
        body["stop_signal"] = int(signal.Signals[cspec.stop_signal])
    if cspec.init:
        body["init"] = True
    body.update(cspec.extra)
    return body


@dataclass(slots=True)
class _Container:
    ref: str
    name: str
    api: _Libpod
    stop_signal: str | None
    feed: LogFeed = field(default_factory=LogFeed)
    exited: bool = False
    exit_code: int | None = None
    reader: asyncio.Task[None] | None = None
    follower: asyncio.Task[None] | None = None

    def read_logs(self) -> None:
        """Follow the log until the container exits (or ``stop_following``),
        then read what following missed: libpod's k8s-file logs arrive up to
        250 ms late, and nothing arrives once the container is removed."""
        delivered = 0

        async def follow() -> None:
            nonlocal delivered
            async for payload in self.api.logs(self.ref):
                delivered += len(payload)
                self.feed.feed(payload)

        async def read() -> None:
            self.follower = asyncio.create_task(follow())
            try:
                await asyncio.wait([self.follower])
                rest = (await self.api.all_logs(self.ref))[delivered:]
                if rest:
                    self.feed.feed(rest)
            except BackendError:
                pass  # the engine went away: the output ends here
            finally:
                self.follower.cancel()
                self.feed.close()

        self.reader = asyncio.create_task(read(), name=f"podman logs {self.name}")

    def stop_following(self) -> None:
        if self.follower is not None:
            self.follower.cancel()


class PodmanBackend:
    """Runs ``LaunchSpec.container`` on Podman through its libpod API.

    ``instance`` names this swapvisor in every container's labels and default
    name; keep it stable across restarts so ``reap_orphans`` finds what an
    earlier run left. ``engine_url`` is the default socket (None:
    ``CONTAINER_HOST``, else the rootful socket); a spec's own URL wins.
    ``engines`` lists further sockets for ``reap_orphans`` to clean.
    """

    kind: ClassVar[str] = "podman"

    def __init__(
        self,
        instance: str,
        *,
        engine_url: str | None = None,
        engines: Iterable[str] = (),
        api_timeout_s: float = API_TIMEOUT_S,
    ) -> None:
        self.instance = check_instance(instance)
        self._default_url = (
            engine_url or os.environ.get("CONTAINER_HOST") or DEFAULT_URL
        )
        self._reap_urls: set[str] = {self._default_url, *engines}
        self._timeout_s = api_timeout_s
        self._apis: dict[str, _Libpod] = {}
        self._containers: dict[str, _Container] = {}
        self._exits = ExitLog()
        self._probe = HttpProbe()
        self._closed = False

    def _api(self, url: str | None) -> _Libpod:
        url = url or self._default_url
        api = self._apis.get(url)
        if api is None:
            if url.startswith("ssh://"):
                raise BackendStartError(
                    f"engine URL {url}: the podman backend speaks unix:// or tcp://"
                )
            api = self._apis[url] = _Libpod(url, self._timeout_s)
            self._reap_urls.add(url)
        return api

    async def start(self, model: str, spec: LaunchSpec) -> Handle:
        cspec = container_spec(spec, self.kind)
        api = self._api(cspec.engine_url)
        await self._ensure_image(api, cspec)
        name = container_name(self.instance, model, cspec)
        body = create_body(
            spec, cspec, name, ownership_labels(self.instance, model, cspec)
        )
        # The launch runs to its end even if start() is cancelled: a create
        # cut off halfway leaves a broken container behind on Podman (in its
        # database, not in its storage), which then fails every listing.
        launch = asyncio.ensure_future(self._launch(api, body, cspec.image))
        try:
            ref = await asyncio.shield(launch)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await api.remove(await launch)
            raise
        rec = self._containers[ref] = _Container(ref, name, api, cspec.stop_signal)
        rec.read_logs()
        return Handle(model=model, kind=self.kind, ref=ref, base_url=spec.base_url)

    async def _launch(self, api: _Libpod, body: JSON, image: str) -> str:
        """Create and start; a container that fails to start is removed."""
        ref = await self._create(api, body)
        try:
            await api.start(ref)
        except BaseException as exc:
            with contextlib.suppress(BackendError):
                await api.remove(ref)
            if isinstance(exc, BackendStartError):
                raise BackendStartError(
                    f"container {body['name']} ({image}) failed to start: {exc}"
                ) from exc
            raise
        return ref

    async def _create(self, api: _Libpod, body: JSON) -> str:
        name = str(body["name"])
        try:
            return await api.create(body)
        except _NameConflict:
            pass
        state = await api.inspect(name)
        if state is not None:
            owner = state.labels.get(LABEL_INSTANCE)
            if owner != self.instance:
                raise BackendStartError(
                    f"container name {name} is taken by a container that swapvisor "
                    f"instance {self.instance} does not own"
                    + (f" (it belongs to instance {owner})" if owner else "")
                    + "; remove it or choose another name"
                )
            await api.remove(name)
        try:
            return await api.create(body)
        except _NameConflict:
            raise BackendStartError(
                f"container name {name} is still in use after removing the stale "
                "container"
            ) from None

    async def _ensure_image(self, api: _Libpod, cspec: ContainerSpec) -> None:
        image, policy = cspec.image, cspec.pull
        present = await api.image_present(image)
        if present and policy != "always":
            return
        if not present and policy == "never":
            raise image_error(image, policy, "")
        try:
            await api.pull(image)
        except BackendStartError as exc:
            raise image_error(image, policy, str(exc)) from exc
        if not await api.image_present(image):
            raise image_error(image, policy, "the engine reported no error")

    async def health(self, handle: Handle, spec: LaunchSpec) -> Health:
        rec = self._containers.get(handle.ref)
        if rec is None or rec.exited:
            return Health.EXITED
        state = await rec.api.inspect(rec.ref)
        if state is None or not state.running:
            # Seen from the engine: a crash while starting or while serving.
            rec.exited = True
            rec.exit_code = state.exit_code if state is not None else None
            return Health.EXITED
        if spec.check_endpoint is None:
            return Health.READY
        url = join_url(handle.base_url, spec.check_endpoint)
        if await self._probe.ok(url, spec.probe_timeout_s):
            return Health.READY
        return Health.STARTING

    async def stop(self, handle: Handle, spec: LaunchSpec, *, grace: float) -> ExitInfo:
        rec = self._containers.pop(handle.ref, None)
        if rec is None:
            return self._exits.get(handle.ref) or ExitInfo(code=None, forced=False)
        try:
            info = await self._terminate(rec, grace)
            # Let the reader collect the last output before it is removed.
            rec.stop_following()
            if rec.reader is not None:
                await asyncio.wait([rec.reader], timeout=LOG_DRAIN_S)
        finally:
            # Always remove, after a crash too: a leftover holds the name and,
            # with host networking, maybe the port.
            rec.stop_following()
            await rec.api.remove(rec.ref)
        self._exits.put(rec.ref, info)
        return info

    async def _terminate(self, rec: _Container, grace: float) -> ExitInfo:
        """Stop signal, wait ``grace``, SIGKILL: sub-second graces work, and
        we know whether it had to be killed (the engine's stop says neither)."""
        api = rec.api
        state = await api.inspect(rec.ref)
        if state is None:
            return ExitInfo(code=rec.exit_code, forced=False)
        if not state.running:
            return exit_info(state.exit_code, forced=False)
        sig = rec.stop_signal or _signal_name(state.stop_signal) or "SIGTERM"
        grace = max(grace, 0.0)
        waiter = asyncio.ensure_future(api.wait(rec.ref, grace + WAIT_SLACK_S))
        try:
            await api.kill(rec.ref, sig)
            try:
                code = await asyncio.wait_for(asyncio.shield(waiter), grace)
                return exit_info(code, forced=False)
            except TimeoutError:
                await api.kill(rec.ref, "SIGKILL")
                return exit_info(await waiter, forced=True)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(BaseException):
                    await waiter

    async def wait(self, handle: Handle) -> None:
        """Return once the container has stopped; never raises for that.

        For ``controller.upstream``'s exit watch; an engine that drops the
        call is asked again.
        """
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        if self._closed:
            await _forever()  # closed: exits can no longer be seen
        api, ref = rec.api, rec.ref
        while True:
            try:
                await api.wait(ref, None, interval=WATCH_INTERVAL)
                state = await api.inspect(ref)
                if state is None or not state.running:
                    return
            except BackendError:
                await asyncio.sleep(WATCH_RETRY_S)
                if self._closed:
                    await _forever()

    async def logs(self, handle: Handle) -> AsyncIterator[bytes]:
        rec = self._containers.get(handle.ref)
        if rec is None:
            return
        async for line in rec.feed.lines():
            yield line

    async def reap_orphans(self) -> list[str]:
        reaped: list[str] = []
        for url in sorted(self._reap_urls):
            api = self._api(url)
            for row in await api.list_owned(self.instance):
                if row.id in self._containers:
                    continue  # ours, started by this object: not an orphan
                await api.remove(row.id)
                reaped.append(row.name)
        return reaped

    async def aclose(self) -> None:
        self._closed = True
        readers = [r.reader for r in self._containers.values() if r.reader]
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
        apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            await api.aclose()
        await self._probe.aclose()


def _signal_name(value: str | None) -> str | None:
    """libpod reports the stop signal as a number."""
    if value is None:
        return None
    if value.isdigit():
        with contextlib.suppress(ValueError):
            return signal.Signals(int(value)).name
        return None
    return value


async def _forever() -> None:
    """Park an exit watch whose backend was closed until it is cancelled."""
    await asyncio.get_running_loop().create_future()


if TYPE_CHECKING:
    _check: type[Backend] = PodmanBackend
    _check_reap: type[SupportsOrphanCleanup] = PodmanBackend
