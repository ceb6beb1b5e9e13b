"""llama-swap drop-in details of the HTTP surface: setParamsByID ids listed as
aliases, and the ``/comfyui`` endpoints (llama-swap.md §2.7, §5.7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import fake_cmd

if TYPE_CHECKING:
    from tests.harness import Apps

THINK = f"""
includeAliasesInList: true
models:
  fake:
    cmd: {fake_cmd("fake")}
    aliases: [f]
    filters:
      setParamsByID:
        "${{MODEL_ID}}": {{temperature: 0.1}}
        "fake:think": {{temperature: 0.9}}
"""


async def test_set_params_by_id_keys_are_listed_as_aliases(apps: Apps) -> None:
    app = await apps.start(THINK)
    listed = {m["id"]: m for m in (await app.json("/v1/models"))["data"]}
    assert sorted(listed) == ["f", "fake", "fake:think"]
    assert listed["fake"]["meta"]["llamaswap"]["aliases"] == ["f", "fake:think"]
    assert listed["fake:think"]["meta"]["llamaswap"] == {
        "type": "alias",
        "modelID": "fake",
    }


async def test_set_params_by_id_aliases_show_without_the_list_flag(
    apps: Apps,
) -> None:
    app = await apps.start(THINK.replace("includeAliasesInList: true", ""))
    listed = {m["id"]: m for m in (await app.json("/v1/models"))["data"]}
    assert sorted(listed) == ["fake"]
    assert listed["fake"]["meta"]["llamaswap"]["aliases"] == ["f", "fake:think"]


COMFY = f"""
models:
  comfyui_auto:
    cmd: {fake_cmd("comfy")}
"""


async def test_comfyui_without_a_slash_redirects_keeping_the_query(
    apps: Apps,
) -> None:
    app = await apps.start(COMFY)
    r = await app.client.get("/comfyui?x=1", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (301, "/comfyui/?x=1")
    r = await app.client.post("/comfyui", allow_redirects=False)
    assert (r.status, r.headers["Location"]) == (308, "/comfyui/")


async def test_only_the_comfyui_root_may_start_it(apps: Apps) -> None:
    app = await apps.start(COMFY)
    r = await app.client.get("/comfyui/api/queue")
    assert r.status == 409
    body = await r.json()
    assert body["error"]["message"] == (
        "model comfyui_auto is not loaded; only /comfyui/ can start it"
    )
    assert app.state("comfyui_auto") == "stopped"
    r = await app.client.get("/comfyui/?client=1")
    assert r.status == 200
    assert app.state("comfyui_auto") == "ready"
    r = await app.client.get("/comfyui/api/queue%2Fx?y=2")
    assert r.status == 200
    echoed = await r.json()
    assert echoed["server_model"] == "comfy"
    assert echoed["path"] == "/api/queue%2Fx?y=2"  # prefix gone, escaping kept


async def test_comfyui_without_the_model_is_404(apps: Apps) -> None:
    app = await apps.start(f"models:\n  a:\n    cmd: {fake_cmd('a')}\n")
    r = await app.client.get("/comfyui/")
    assert r.status == 404
    assert (await r.json())["error"]["message"] == "local model comfyui_auto not found"
