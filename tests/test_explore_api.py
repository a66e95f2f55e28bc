"""The explorer's HTTP API and pages on a real server on loopback: every endpoint, script
injection through typed text, corpus tokens and labels, path traversal, unknown ids, a store
for other weights, and many clients at once."""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("transformers")

from saelab.cli.explore_cmd import open_explorer, public_host_warning
from saelab.explore import ExploreServer, export_html
from saelab.features import FeatureStore, StoreError
from saelab.io import save
from tests.feature_helpers import (
    ATTRIBUTE_INJECTION,
    INJECTION,
    TinySetup,
    make_setup,
    tiny_sae,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return make_setup(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def server(setup: TinySetup) -> Iterator[ExploreServer]:
    srv = ExploreServer(open_explorer(str(setup.sae_dir)), quiet=True).start()
    yield srv
    srv.stop()


def get(server: ExploreServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def post(server: ExploreServer, path: str, body: bytes, ctype: str) -> tuple[int, str]:
    req = urllib.request.Request(server.url.rstrip("/") + path, data=body, method="POST",
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def api(server: ExploreServer, path: str) -> tuple[int, dict]:
    status, ctype, body = get(server, path)
    assert ctype == "application/json"
    return status, json.loads(body)


def test_server_binds_loopback_and_serves_the_index(server: ExploreServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    status, ctype, body = get(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert "id='latents'" in body and "href='/feature/" in body and "id='fire-text'" in body


def test_meta_and_latent_lists(server: ExploreServer, setup: TinySetup) -> None:
    status, meta = api(server, "/api/meta")
    assert status == 200 and meta["sae"]["d_sae"] == 64 and meta["n_rows"] > 5000
    _, page = api(server, "/api/latents?sort=density&order=desc&limit=64")
    densities = [x["density"] for x in page["latents"]]
    assert densities == sorted(densities, reverse=True) and len(densities) == 64
    _, page = api(server, "/api/latents?sort=max_act&order=asc&limit=5&offset=2")
    maxes = [x["max_act"] for x in page["latents"]]
    assert maxes == sorted(maxes) and len(maxes) == 5
    for bad in ("sort=password", "order=up", "limit=0", "offset=-3", "limit=x"):
        status, err = api(server, f"/api/latents?{bad}")
        assert status == 400 and "error" in err
    status, _, body = get(server, "/?sort=max_act&order=desc")
    assert status == 200 and body.index("/feature/") > 0


def test_feature_page_and_json(server: ExploreServer) -> None:
    status, data = api(server, "/api/feature/7")
    assert status == 200 and data["id"] == 7
    assert len(data["examples"]["top"]) == 20 and data["examples"]["quantile"]
    assert data["histogram"]["counts"] and data["neighbours"] and data["logit_effects"]["promoted"]
    status, _, body = get(server, "/feature/7")
    assert status == 200
    assert "<svg id='histogram'" in body and "<rect" in body
    assert body.count("data-act=") >= 20  # highlighted tokens with their values
    assert "href='/feature/6'" in body and "href='/feature/8'" in body


def test_search_by_id_and_label_text(server: ExploreServer) -> None:
    status, body = post(server, "/api/feature/12/labels", json.dumps(
        {"text": "dialogue openers"}).encode(), "application/json")
    assert status == 201 and json.loads(body)["labels"][0]["text"] == "dialogue openers"
    _, found = api(server, "/api/search?q=openers")
    assert [x["id"] for x in found["latents"]] == [12]
    assert found["latents"][0]["title"] == "dialogue openers"
    _, found = api(server, "/api/search?q=12")
    assert found["latents"][0]["id"] == 12
    _, found = api(server, "/api/search?q=" + quote("%_"))  # LIKE wildcards match literally
    assert found["latents"] == []
    status, _, body = get(server, "/?q=openers")
    assert status == 200 and "dialogue openers" in body and "href='/feature/12'" in body
    status, _ = post(server, "/feature/13/label", b"text=from+the+form", "application/x-www-form-urlencoded")
    assert status == 200  # followed the redirect back to the page
    _, data = api(server, "/api/feature/13")
    assert [lab["text"] for lab in data["labels"]] == ["from the form"]
    status, err = post(server, "/api/feature/12/labels", b"{}", "application/json")
    assert status == 400 and "text" in json.loads(err)["error"]


def test_live_text_fires_latents(server: ExploreServer) -> None:
    status, fired = api(server, "/api/fire?text=" + quote("The grey door is broken again."))
    assert status == 200 and [t.strip() for t in fired["tokens"][1:3]] == ["The", "grey"]
    assert len(fired["per_token"]) == len(fired["tokens"])
    assert fired["per_token"][0] == []  # BOS is not counted, as in the store
    assert all(len(p) > 0 for p in fired["per_token"][1:])
    assert fired["latents"][0]["max"] >= fired["latents"][-1]["max"] > 0
    status, _, body = get(server, "/fire?text=" + quote("The grey door"))
    assert status == 200 and "id='fire-tokens'" in body and "class='latent-link'" in body
    status, err = api(server, "/api/fire?text=")
    assert status == 400 and "type some text" in err["error"]


def test_typed_text_cannot_inject_markup(server: ExploreServer) -> None:
    for text in (INJECTION, ATTRIBUTE_INJECTION, "</textarea><script>alert(3)</script>"):
        status, _, body = get(server, "/fire?text=" + quote(text))
        assert status == 200
        assert "<script" not in body.lower() and "<img" not in body.lower()
        assert "&lt;script&gt;" in body or "&lt;img" in body
        status, _, body = get(server, "/?q=" + quote(text))
        assert "<script" not in body.lower() and "<img" not in body.lower()


def test_corpus_tokens_and_labels_cannot_inject_markup(server: ExploreServer) -> None:
    seen = 0
    for latent in range(64):
        _, data = api(server, f"/api/feature/{latent}")
        tokens = {t.strip() for kind in data["examples"].values() for e in kind
                  for t in e["tokens"]}
        if INJECTION in tokens or ATTRIBUTE_INJECTION in tokens:
            _, _, body = get(server, f"/feature/{latent}")
            assert "<script" not in body.lower() and "<img" not in body.lower()
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body or "&lt;img/src" in body
            seen += 1
    assert seen > 0, "the corpus's markup tokens should appear in some stored context"
    post(server, "/api/feature/20/labels", json.dumps({"text": INJECTION}).encode(),
         "application/json")
    for path in ("/feature/20", "/?q=script", "/?sort=id&order=asc"):
        _, _, body = get(server, path)
        assert "<script" not in body.lower()
    _, _, body = get(server, "/?q=script")
    assert "&lt;script&gt;" in body


@pytest.mark.parametrize("path", [
    "/../../etc/passwd", "/feature/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/feature/1/../../sae/sae.safetensors", "/features.db", "/feature/..%2F..%2Fcfg.json",
    "/api/feature/..%2f..%2fsae.safetensors", "/static/../../../etc/passwd", "//etc/passwd",
    "/api/../../features.db"])
def test_no_url_reaches_a_file(server: ExploreServer, path: str) -> None:
    # urllib would normalise "..": send the raw request line ourselves
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 404
    assert b"root:" not in body and b"SQLite format" not in body and b"architecture" not in body


@pytest.mark.parametrize("path", ["/feature/64", "/feature/999999999", "/feature/-1",
                                  "/feature/abc", "/api/feature/64", "/api/feature/1e3"])
def test_unknown_latents_are_404(server: ExploreServer, path: str) -> None:
    status, ctype, body = get(server, path)
    assert status == 404
    if path.startswith("/api/"):
        assert ctype == "application/json" and "error" in json.loads(body)
    else:
        assert "id='not-found'" in body
    if path.endswith("/64"):
        assert "latents 0 to 63" in body


def test_store_for_other_weights_is_refused(setup: TinySetup, tmp_path: Path) -> None:
    other = save(tiny_sae(seed=7), tmp_path / "other")
    with pytest.raises(StoreError, match="other SAE weights"):
        open_explorer(str(setup.sae_dir), sae_dir=str(other))
    with pytest.raises(StoreError, match="other SAE weights"):
        FeatureStore(setup.store_dir, tiny_sae(seed=7))


def test_many_clients_at_once(server: ExploreServer) -> None:
    paths = [f"/api/feature/{i % 64}" for i in range(120)] + [f"/feature/{i}" for i in range(40)]

    def fetch(path: str) -> int:
        return get(server, path)[0]

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(fetch, paths))
    assert statuses == [200] * len(paths)


def test_static_export(setup: TinySetup, tmp_path: Path) -> None:
    store = FeatureStore(setup.store_dir)
    out = export_html(store, tmp_path / "site", latents=[0, 1, 2], progress=False)
    index = (out / "index.html").read_text()
    assert "href='feature/1.html'" in index and "<script" not in index.lower()
    page = (out / "feature" / "1.html").read_text()
    assert "href='../index.html'" in page and "<svg id='histogram'" in page
    assert "href='2.html'" in page and sorted(p.name for p in (out / "feature").iterdir()) == [
        "0.html", "1.html", "2.html"]


def test_public_host_warns() -> None:
    assert public_host_warning("127.0.0.1") == "" and public_host_warning("localhost") == ""
    assert "reachable from other machines" in public_host_warning("0.0.0.0")
    assert "reachable from other machines" in public_host_warning("192.168.1.5")


def steer_query(**fields: str) -> str:
    return "&".join(f"{k}={quote(v)}" for k, v in fields.items())


def test_steering_api_alpha_zero_is_identical_and_matches_steer_text(
        server: ExploreServer, setup: TinySetup) -> None:
    from saelab.models.hf import load_hf_model
    from saelab.steer import Intervention, LatentEdit, steer_text

    prompt = "The grey door is"
    status, zero = api(server, "/api/feature/7/steer?" + steer_query(
        prompt=prompt, edit="add", value="0", max_new_tokens="12"))
    assert status == 200, zero
    assert zero["latent"] == 7 and zero["edit"] == "7:add:0" and zero["hook"] == "transformer.h.1"
    assert zero["steered"] == zero["unsteered"] and zero["steered"].strip()
    assert zero["kl_next_token"] == 0.0 and zero["kl_mean_prompt"] == 0.0
    assert zero["top_steered"] == zero["top_unsteered"]

    status, pushed = api(server, "/api/feature/7/steer?" + steer_query(
        prompt=prompt, edit="add", value="60", max_new_tokens="12"))
    assert status == 200 and pushed["kl_next_token"] > 1e-3
    assert pushed["unsteered"] == zero["unsteered"] != pushed["steered"]
    # the API steers this latent at the store's hook with exactly the typed edit
    loaded = load_hf_model(setup.model)
    direct = steer_text(loaded.model, loaded.tokenizer, prompt,
                        [Intervention(setup.sae, "transformer.h.1", [LatentEdit(7, "add", 60.0)])],
                        max_new_tokens=12)
    assert pushed["steered"] == direct.steered
    assert pushed["kl_next_token"] == pytest.approx(direct.kl_next_token, rel=1e-5)
    for edit, value, described in (("clamp", "-3", "7:clamp:-3"), ("scale", "2.5", "7:scale:2.5"),
                                   ("zero", "", "7:zero")):
        status, got = api(server, "/api/feature/7/steer?" + steer_query(
            prompt=prompt, edit=edit, value=value, max_new_tokens="2"))
        assert status == 200 and got["edit"] == described and got["max_new_tokens"] == 2


def test_steering_box_on_the_feature_page(server: ExploreServer) -> None:
    status, _, body = get(server, "/feature/7")
    assert status == 200 and "id='steer-prompt'" in body and "action='/feature/7/steer#steer'" in body
    assert "id='steer-steered'" not in body
    status, _, body = get(server, "/feature/7/steer?" + steer_query(
        prompt="The grey door is", edit="clamp", value="30", max_new_tokens="6"))
    assert status == 200
    assert "id='steer-unsteered'" in body and "id='steer-steered'" in body
    assert "id='steer-kl'" in body and "<option value='clamp' selected>" in body
    assert "value='30'" in body  # the form keeps what was typed


def test_steering_prompt_cannot_inject_markup(server: ExploreServer) -> None:
    for text in (INJECTION, ATTRIBUTE_INJECTION, "</textarea><script>alert(3)</script>"):
        status, _, body = get(server, "/feature/3/steer?" + steer_query(
            prompt=text, edit="add", value="5", max_new_tokens="3"))
        assert status == 200 and "id='steer-steered'" in body
        assert "<script" not in body.lower() and "<img" not in body.lower()
        assert "&lt;script&gt;" in body or "&lt;img" in body
        # injection through the other fields comes back escaped in the error
        status, _, body = get(server, "/feature/3/steer?" + steer_query(
            prompt="hi", edit="add", value=text, max_new_tokens="3"))
        assert status == 400 and "id='steer-error'" in body
        assert "<script" not in body.lower() and "<img" not in body.lower()


@pytest.mark.parametrize("fields, message", [
    ({"value": "nan"}, "finite number"), ({"value": "inf"}, "finite number"),
    ({"value": "-Infinity"}, "finite number"), ({"value": "1e999"}, "finite number"),
    ({"value": "1e5"}, "finite number"), ({"value": "four"}, "not a number"),
    ({"max_new_tokens": "0"}, "max_new_tokens"), ({"max_new_tokens": "65"}, "max_new_tokens"),
    ({"max_new_tokens": "-1"}, "max_new_tokens"), ({"max_new_tokens": "9" * 40}, "max_new_tokens"),
    ({"max_new_tokens": "2.5"}, "max_new_tokens"), ({"edit": "explode"}, "unknown edit"),
    ({"prompt": ""}, "type a prompt"), ({"prompt": "   "}, "type a prompt"),
    ({"prompt": "x" * 1001}, "longer than 1000"),
])
def test_steering_refuses_bad_values(server: ExploreServer, fields: dict[str, str],
                                     message: str) -> None:
    query = {"prompt": "The grey door", "edit": "add", "value": "4", "max_new_tokens": "4"}
    query.update(fields)
    status, err = api(server, "/api/feature/7/steer?" + steer_query(**query))
    assert status == 400 and message in err["error"]
    status, _, body = get(server, "/feature/7/steer?" + steer_query(**query))
    assert status == 400 and "id='steer-error'" in body and message in html.unescape(body)


def test_steering_prompt_token_limit(server: ExploreServer) -> None:
    # under the character limit but over the token limit of the tiny model (128 positions)
    status, err = api(server, "/api/feature/7/steer?" + steer_query(
        prompt="a b c d e f g h " * 20, max_new_tokens="8"))
    assert status == 400 and "tokens" in err["error"] and "shorten it" in err["error"]


def test_steering_unknown_latent_is_404(server: ExploreServer) -> None:
    status, err = api(server, "/api/feature/64/steer?prompt=hi")
    assert status == 404 and "latents 0 to 63" in err["error"]
    status, _, _ = get(server, "/feature/64/steer?prompt=hi")
    assert status == 404


def test_steering_without_a_usable_model_says_why(setup: TinySetup) -> None:
    from saelab.explore import ExploreApp, LiveEncoder
    from saelab.features import ModelSpec, load_model

    def page_and_api(app: ExploreApp) -> tuple[str, int, dict]:
        _, _, body = app.get("/feature/7", {})
        status, _, raw = app.get("/api/feature/7/steer", {"prompt": ["The grey door"]})
        return body.decode(), status, json.loads(raw)

    no_model = open_explorer(str(setup.sae_dir), live=False)
    body, status, err = page_and_api(no_model)
    assert "id='steer-note'" in body and "id='steer-prompt'" not in body
    assert "no model" in body and status == 400 and "no model" in err["error"]

    spec = ModelSpec.of_cache(setup.cache)
    loaded = load_model(spec)
    loaded.is_causal_lm = False  # as for an encoder such as MiniLM
    store = FeatureStore(setup.store_dir, setup.sae)
    encoder_app = ExploreApp(store, LiveEncoder(setup.sae, spec, loaded=loaded))
    body, status, err = page_and_api(encoder_app)
    assert "id='steer-note'" in body and "needs a causal LM" in body
    assert status == 400 and "needs a causal LM" in err["error"]

    game = LiveEncoder(setup.sae, ModelSpec("game", "othello", "blocks.3", "othello"))
    assert "needs a Hugging Face causal LM" in game.steer_note()
