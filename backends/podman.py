"""Podman backend: each model server is a container, driven through Podman's
libpod REST API (``podman system service``) with aiohttp.

Owns the libpod side only: ``LibpodEngine`` adapts the API to the
``backends.container.Engine`` protocol, and ``create_body`` builds the create
request. The lifecycle is ``backends.container.ContainerBackend``'s, shared
with the Docker backend.

aiohttp rather than podman-py: the calls are natively async (no threads), the
few endpoints used are typed here, and podman-py's list results break on
``.status``. Rootful podman's socket is the default
(``unix:///run/podman/podman.sock``; ``CONTAINER_HOST`` overrides it, as for
the podman CLI); ``tcp://`` works too, ``ssh://`` does not. GPUs are CDI
devices (``nvidia.com/gpu=all`` or ``=<id>``), which needs the NVIDIA
Container Toolkit's CDI spec on the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

import aiohttp
import yarl

from backends import container
from backends.base import BackendStartError, BackendUnavailable
from backends.containers import (
    LABEL_INSTANCE,
    FrameDecoder,
    common_request,
    pull_error,
    top_pids,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from backends.base import Backend, LaunchSpec, SupportsOrphanCleanup
    from backends.specs import ContainerSpec

DEFAULT_URL = "unix:///run/podman/podman.sock"
API_PREFIX = "/v4.0.0/libpod"  # served by podman 4.x and 5.x alike
# libpod polls a container's state every `interval` while it answers a wait
# (250 ms by default): briskly for a stop, which waits briefly; gently for an
# exit watch, which lasts the container's life.
STOP_INTERVAL = "10ms"
WATCH_INTERVAL = "200ms"
CDI_GPU = "nvidia.com/gpu"
_NETNS_MODES = ("host", "none", "private", "slirp4netns", "pasta")

JSON = dict[str, object]


class LibpodEngine:
    """One libpod API endpoint as an ``Engine``; building it does no I/O.

    ``url`` None: ``CONTAINER_HOST``, else the rootful socket. Only
    ``unix://`` and ``tcp://`` (or ``http://``) can be reached.
    """

    def __init__(self, url: str | None, timeout_s: float) -> None:
        url = url or os.environ.get("CONTAINER_HOST") or DEFAULT_URL
        scheme, _, rest = url.partition("://")
        if scheme == "ssh":
            raise BackendStartError(
                f"engine URL {url}: the podman backend speaks unix:// or tcp://"
            )
        if scheme not in ("unix", "tcp", "http"):
            raise BackendUnavailable(
                f"Podman API URL {url}: use unix:///path/podman.sock or tcp://host:port"
            )
        self.url = url
        self.where = f"Podman API at {url}"
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
        except TimeoutError as exc:  # aiohttp's own timeouts included
            raise BackendUnavailable(
                f"{self.where} is not answering (no answer to {method} {path} in time)"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"{self.where} is unreachable: {exc}") from exc

    async def ping(self, timeout_s: float) -> None:
        status, data = await self.request("GET", "/_ping", timeout_s=timeout_s)
        if status != 200:
            raise BackendUnavailable(f"{self.where}: {_message(data, status)}")

    def create_request(
        self, spec: LaunchSpec, cspec: ContainerSpec, name: str, labels: dict[str, str]
    ) -> container.Request:
        return create_body(spec, cspec, name, labels)

    async def image_present(self, image: str) -> bool:
        status, data = await self.request(
            "GET", f"/images/{quote(image, safe='')}/exists"
        )
        if status not in (204, 404):
            raise BackendUnavailable(f"{self.where}: {_message(data, status)}")
        return status == 204

    async def pull(self, image: str) -> None:
        status, data = await self.request(
            "POST",
            "/images/pull",
            params={"reference": image, "quiet": "true"},
            timeout_s=None,
        )
        if status != 200:
            raise container.Refused(_message(data, status))
        reason = pull_error(data)
        if reason is not None:
            raise container.Refused(reason)

    async def create(self, request: container.Request) -> str:
        status, data = await self.request("POST", "/containers/create", body=request)
        if status == 201:
            return str(_json(data).get("Id"))
        text = _message(data, status)
        if status == 409 or "already in use" in text:
            raise container.NameConflict(text)
        if status == 404 or "image not known" in text:
            raise container.ImageMissing(text)
        raise container.Refused(text)

    async def start(self, ref: str) -> None:
        status, data = await self.request("POST", f"/containers/{ref}/start")
        if status not in (204, 304):
            raise container.Refused(_message(data, status))

    async def inspect(self, ref: str) -> container.State | None:
        status, data = await self.request("GET", f"/containers/{ref}/json")
        if status == 404:
            return None
        if status != 200:
            raise BackendUnavailable(
                f"{self.where}: inspect failed: {_message(data, status)}"
            )
        return container.State.parse(_json(data))

    async def kill(self, ref: str, sig: str) -> None:
        status, data = await self.request(
            "POST", f"/containers/{ref}/kill", params={"signal": sig}
        )
        if status not in (200, 204, 404):
            raise container.Refused(_message(data, status))

    async def remove(self, ref: str) -> None:
        # Without timeout=0 a forced remove waits the stop timeout (10 s).
        status, data = await self.request(
            "DELETE",
            f"/containers/{ref}",
            params={"force": "true", "v": "true", "timeout": "0"},
        )
        if status not in (200, 204, 404):
            raise container.Refused(_message(data, status))

    async def wait_stopped(
        self, ref: str, timeout_s: float
    ) -> container.Stopped | None:
        try:
            async with asyncio.timeout(timeout_s):
                return container.Stopped(await self._wait(ref, STOP_INTERVAL))
        except TimeoutError:
            return None

    async def watch(self, ref: str) -> None:
        await self._wait(ref, WATCH_INTERVAL)

    async def _wait(self, ref: str, interval: str) -> int | None:
        """Until the container stops: its exit code, None if it is gone."""
        status, data = await self.request(
            "POST",
            f"/containers/{ref}/wait",
            params={"interval": interval},
            timeout_s=None,
        )
        if status == 404:
            return None
        if status != 200:
            raise container.Refused(
                f"waiting for {ref[:12]} failed: {_message(data, status)}"
            )
        return int(data.strip() or b"0")

    async def list_owned(self, instance: str) -> list[container.Summary]:
        filters = json.dumps({"label": [f"{LABEL_INSTANCE}={instance}"]})
        params = {"all": "true", "filters": filters}
        status, data = await self.request("GET", "/containers/json", params=params)
        if status != 200:
            raise container.Refused(_message(data, status))
        return container.Summary.parse_list(json.loads(data) if data.strip() else [])

    async def processes(self, ref: str) -> frozenset[int]:
        # "hpid": psgo's descriptor for the host pid ("pid" is the one in the
        # container's namespace, which NVML never reports).
        status, data = await self.request(
            "GET",
            f"/containers/{ref}/top",
            params={"ps_args": "hpid", "stream": "false"},
        )
        if status == 404:
            return frozenset()
        if status != 200:
            text = _message(data, status)
            if status == 409 or "not running" in text:
                return frozenset()
            raise container.Refused(text)
        # A stopped container's top is a 200 with no body (podman 4.3).
        return top_pids(_json(data)) if data.strip() else frozenset()

    async def memory_usage(self, ref: str) -> int | None:
        status, data = await self.request(
            "GET",
            "/containers/stats",
            params={"containers": ref, "stream": "false"},
        )
        if status == 404:
            return None
        if status != 200:
            raise container.Refused(_message(data, status))
        rows = _json(data).get("Stats")
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            return None
        used = rows[0].get("MemUsage")
        return used if isinstance(used, int) and not isinstance(used, bool) else None

    async def follow_logs(self, ref: str) -> AsyncIterator[bytes]:
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
    body = common_request(spec, cspec, name, labels, env_key="env")
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
    # A placement replaces the container's own `gpus`: the engine decided
    # which devices it may use, and counted their memory.
    devices = (
        cdi_devices(cspec.gpu_request)
        if spec.devices is None
        else [f"{CDI_GPU}={i}" for i in spec.devices]
    )
    if devices:
        body["devices"] = [{"path": d} for d in devices]
    if cspec.ipc is not None:
        mode, _, value = cspec.ipc.partition(":")
        body["ipcns"] = {"nsmode": mode, "value": value} if value else {"nsmode": mode}
    if cspec.stop_signal is not None:
        body["stop_signal"] = int(signal.Signals[cspec.stop_signal])
    body.update(cspec.extra)
    return body


class PodmanBackend(container.ContainerBackend):
    """Runs ``LaunchSpec.container`` on Podman through its libpod API.

    ``engine_url`` None: ``CONTAINER_HOST``, else the rootful socket. The rest
    is ``ContainerBackend``'s.
    """

    kind: ClassVar[str] = "podman"

    async def _connect(self, url: str | None, timeout_s: float) -> container.Engine:
        return LibpodEngine(url, timeout_s)


if TYPE_CHECKING:
    _check: type[Backend] = PodmanBackend
    _check_reap: type[SupportsOrphanCleanup] = PodmanBackend
    _check_engine: type[container.Engine] = LibpodEngine
