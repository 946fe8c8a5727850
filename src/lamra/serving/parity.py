"""``lamra parity``: does another engine's ``/v1/embeddings`` (or ``/v1/rerank``) give the reference numbers?

A fixed probe set goes to the endpoint and through the reference path in-process
(:meth:`Retriever.encode`, :meth:`Reranker.score`); each probe's cosine and max |difference| are
compared, summarised per modality, and the pattern of misses names the setting that most likely
explains them:

- texts match, every image differs -> **positions** (Qwen2-VL's M-RoPE instead of LamRA-Ret's 1-D
  positions; vLLM's Qwen2-VL pooling does this),
- texts and an image that needs no resizing match, resized images differ -> **resize** (max_pixels /
  min_pixels),
- only the RGBA image differs -> **alpha** handling; only the instruction query -> **instruction**,
- texts differ too -> **template / model** (another checkpoint, chat template or pooling); for the
  reranker, image scores near 0.5 -> served without the chat template.

Images go as ``data:`` URIs in vLLM's ``messages`` form, one probe per request, so any engine that
speaks the OpenAI embeddings API with images can be checked.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..items import Item

# 1 - cosine beyond this fails a probe (fp32 engines agree to ~1e-6; bf16 ones need about 1e-2).
DEFAULT_TOLERANCE = 1e-3
INSTRUCTION = "Find me an everyday image that matches the given caption."
_LONG_TEXT = " ".join(f"Sentence {n}: a {c} {s} rests beside the {p} while people pass by slowly."
                      for n, (c, s, p) in enumerate(zip(
                          ["red", "green", "blue", "yellow", "white", "black"] * 5,
                          ["circle", "square", "ball", "car", "dog", "lamp"] * 5,
                          ["river", "market", "station", "garden", "bridge", "harbour"] * 5)))


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str  # text, image (in range / resized / rgba), text+image, images, instruction
    parts: tuple  # text strings and PIL images, in order
    instruction: str | None = None

    @property
    def modality(self) -> str:
        has_text = any(isinstance(p, str) for p in self.parts)
        has_image = any(not isinstance(p, str) for p in self.parts)
        return "image,text" if has_text and has_image else ("image" if has_image else "text")

    def item(self) -> Item:
        return Item.interleaved(self.parts, id=self.name)


def _picture(size: tuple[int, int], seed: int, mode: str = "RGB"):
    """A deterministic picture: a gradient with shapes (no two probes alike)."""
    from PIL import Image, ImageDraw

    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([(x + seed * 40) % 256 + 0 * y, (y + seed * 70) % 256 + 0 * x, (x + y) / 2], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 5, height // 5, width * 3 // 5, height * 3 // 5], fill=(200, 30 * seed % 256, 40))
    draw.rectangle([width // 2, height // 2, width - 4, height - 4], outline=(10, 10, 10), width=3)
    if mode == "RGBA":
        alpha = Image.new("L", size, 0)
        ImageDraw.Draw(alpha).ellipse([4, 4, width - 4, height - 4], fill=255)  # transparent corners
        image.putalpha(alpha)
    return image


def probes() -> list[Probe]:
    """Texts of 3 lengths, images of 3 sizes and aspect ratios, an RGBA image, text+image, two images,
    and an instruction query."""
    square = _picture((224, 224), 1)  # 16 x 16 patches of 14: no resizing at LamRA's pixel range
    wide = _picture((150, 60), 2)  # small and wide: resized up to the 28-pixel grid
    tall = _picture((480, 900), 3)  # over max_pixels: resized down
    return [
        Probe("text-short", "text", ("a dog",)),
        Probe("text-medium", "text", ("A red car parks near the old stone house while two children play "
                                      "football on the street in the late afternoon sun.",)),
        Probe("text-long", "text", (_LONG_TEXT,)),
        Probe("image-square", "image", (square,)),
        Probe("image-wide-small", "image resized", (wide,)),
        Probe("image-tall-large", "image resized", (tall,)),
        Probe("image-rgba", "image rgba", (_picture((112, 112), 4, "RGBA"),)),
        Probe("text+image", "text+image", (square, "A picture with a red circle and a dark frame.")),
        Probe("two-images", "images", (square, _picture((196, 140), 5))),
        Probe("instruction-query", "instruction", ("a red circle on a gradient",), INSTRUCTION),
    ]


def data_uri(image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _content(parts: tuple) -> list[dict]:
    return [{"type": "text", "text": p} if isinstance(p, str)
            else {"type": "image_url", "image_url": {"url": data_uri(p)}} for p in parts]


def embedding_payload(probe: Probe, model: str) -> dict:
    """A text probe as OpenAI's ``input``; any image probe in vLLM's ``messages`` form."""
    body: dict[str, Any] = {"model": model, "encoding_format": "float"}
    if probe.modality == "text":
        body["input"] = probe.parts[0]
    else:
        body["messages"] = [{"role": "user", "content": _content(probe.parts)}]
    if probe.instruction:
        body["instruction"] = probe.instruction
    return body


# -- results -----------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    name: str
    kind: str
    modality: str
    passed: bool
    cosine: float | None = None
    max_abs_diff: float | None = None
    error: str | None = None


@dataclass
class Report:
    url: str
    model: str
    route: str
    tolerance: float
    probes: list[ProbeResult]
    modalities: dict = field(default_factory=dict)
    likely_causes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.probes)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare_vectors(reference: np.ndarray, served: np.ndarray) -> tuple[float, float]:
    """(cosine, max |difference|) of two vectors; a dimension mismatch is (nan, inf)."""
    reference, served = np.asarray(reference, np.float64).ravel(), np.asarray(served, np.float64).ravel()
    if reference.shape != served.shape:
        return math.nan, math.inf
    norms = np.linalg.norm(reference) * np.linalg.norm(served)
    cosine = float(reference @ served / norms) if norms > 0 else math.nan
    return cosine, float(np.max(np.abs(reference - served)))


def summarise(results: list[ProbeResult]) -> dict:
    """Per modality: probes, passed, the lowest cosine and the largest |difference|."""
    out: dict[str, dict] = {}
    for result in results:
        entry = out.setdefault(result.modality, {"probes": 0, "passed": 0, "min_cosine": None, "max_abs_diff": None})
        entry["probes"] += 1
        entry["passed"] += int(result.passed)
        if result.cosine is not None and not math.isnan(result.cosine):
            low = entry["min_cosine"]
            entry["min_cosine"] = result.cosine if low is None else min(low, result.cosine)
        if result.max_abs_diff is not None:
            entry["max_abs_diff"] = (result.max_abs_diff if entry["max_abs_diff"] is None
                                     else max(entry["max_abs_diff"], result.max_abs_diff))
    return out


def likely_causes(results: list[ProbeResult]) -> list[str]:
    """The settings that most likely explain the misses, from which probes failed."""
    failed = {r.name for r in results if not r.passed}
    if not failed:
        return []
    kinds = {r.name: r.kind for r in results}
    texts = [r for r in results if r.kind == "text"]
    images = [r for r in results if r.modality != "text"]
    if any(r.error and "dimension" in r.error for r in results):
        return ["model: the vectors have another dimension - the endpoint serves another checkpoint"]
    if any(r.name in failed for r in texts):
        return ["template / model: text probes differ too - another checkpoint or adapter, another chat template "
                "or prompt (LamRA-Ret reads its own prompt ending before <emb>), or another pooling (LamRA pools "
                "the last token before <emb>)"]
    causes = []
    if images and all(r.name in failed for r in images):
        causes.append("positions: texts match but every image differs - the engine likely numbers image tokens "
                      "with Qwen2-VL's M-RoPE positions (vLLM's Qwen2-VL pooling does); LamRA-Ret's vectors "
                      "use 1-D positions (lamra: --positions 1d)")
    elif any(kinds[n] == "image resized" for n in failed) and "image-square" not in failed:
        causes.append("resize: images that need resizing differ while one on the 28-pixel grid matches - check "
                      "max_pixels / min_pixels (LamRA: 300*28*28 and 4*28*28) and the resize rule")
    else:
        if "image-rgba" in failed:
            causes.append("alpha: the RGBA image differs - the engine handles transparency otherwise")
        if failed & {"two-images", "text+image"} and "image-square" not in failed:
            causes.append("template: items with several parts differ - check the order of image and text parts")
    if "instruction-query" in failed:
        causes.append("instruction: the instruction query differs - the engine ignored the 'instruction' field or "
                      "placed it otherwise")
    return causes or ["unknown: compare the prompts (lamra prompt) and the settings in GET /v1/models"]


# -- running -----------------------------------------------------------------------------------------------


def check_embeddings(client, model: str, retriever, *, url: str = "", tolerance: float = DEFAULT_TOLERANCE) -> Report:
    """Send every probe to ``client`` (an httpx.Client at the endpoint) and compare with ``retriever``."""
    chosen = probes()
    references = retriever.encode([p.item() for p in chosen], [p.instruction for p in chosen], show_progress=False)
    results = []
    for probe, reference in zip(chosen, references):
        result = ProbeResult(probe.name, probe.kind, probe.modality, passed=False)
        try:
            served = _post(client, "/v1/embeddings", embedding_payload(probe, model))["data"][0]["embedding"]
        except EndpointError as exc:
            result.error = str(exc)
            results.append(result)
            continue
        result.cosine, result.max_abs_diff = compare_vectors(reference, np.asarray(served, np.float32))
        if math.isnan(result.cosine):
            result.error = f"dimension {len(served)} against the reference's {len(reference)}"
        result.passed = not math.isnan(result.cosine) and 1.0 - result.cosine <= tolerance
        results.append(result)
    return Report(url, model, "/v1/embeddings", tolerance, results, summarise(results), likely_causes(results))


def rerank_probes() -> list[tuple[str, Any, list, str | None]]:
    """(name, query, documents, instruction): a text query over texts, a text query over images, an image query."""
    square, other = _picture((224, 224), 1), _picture((196, 140), 5)
    texts = ["A dog runs on the grass.", "A red car parks near the house.", "Two people walk along the beach."]
    return [
        ("text-query-text-docs", "a dog in a park", texts, None),
        ("text-query-image-docs", "a red circle", [square, other, (other, "a framed picture")], INSTRUCTION),
        ("image-query-text-docs", square, texts + ["A red circle on a gradient."], None),
    ]


def _rerank_value(value) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        image, text = value
        return {"text": text, "image": data_uri(image)}
    return {"image": data_uri(value)}


def _rerank_item(value) -> Item:
    if isinstance(value, str):
        return Item(text=value)
    if isinstance(value, tuple):
        return Item(text=value[1], images=[value[0]])
    return Item(images=[value])


def check_rerank(client, model: str, reranker, *, url: str = "", tolerance: float = DEFAULT_TOLERANCE) -> Report:
    """Each rerank probe's relevance scores against :meth:`Reranker.score`: max |difference| within tolerance."""
    results = []
    for name, query, documents, instruction in rerank_probes():
        reference = reranker.score(_rerank_item(query), [_rerank_item(d) for d in documents], instruction)
        modality = "text" if all(isinstance(d, str) for d in documents) and isinstance(query, str) else "image"
        result = ProbeResult(name, "rerank", modality, passed=False)
        body = {"model": model, "query": _rerank_value(query), "documents": [_rerank_value(d) for d in documents]}
        if instruction:
            body["instruction"] = instruction
        try:
            answer = _post(client, "/v1/rerank", body)["results"]
            served = np.full(len(documents), np.nan)
            for entry in answer:
                served[int(entry["index"])] = float(entry["relevance_score"])
        except (EndpointError, KeyError, ValueError, IndexError, TypeError) as exc:
            result.error = str(exc)
            results.append(result)
            continue
        result.max_abs_diff = float(np.nanmax(np.abs(served - reference))) if not np.isnan(served).all() else math.inf
        result.cosine = None
        result.passed = not np.isnan(served).any() and result.max_abs_diff <= tolerance
        results.append(result)
    causes = []
    if any(not r.passed for r in results):
        image_failed = [r for r in results if r.modality == "image" and not r.passed]
        text_failed = [r for r in results if r.modality == "text" and not r.passed]
        causes.append("template: image scores differ while texts match - a reranker served without its chat "
                      "template scores every image near 0.5" if image_failed and not text_failed else
                      "model / score: the scores differ - another checkpoint, or not the official P(Yes) "
                      "(softmax over the Yes and No logits with the checkpoint's repetition penalty)")
    return Report(url, model, "/v1/rerank", tolerance, results, summarise(results), causes)


class EndpointError(Exception):
    """The endpoint refused a probe or answered something that is not the expected JSON."""


def _post(client, path: str, body: dict) -> dict:
    import httpx

    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as exc:
        raise EndpointError(f"{path}: {exc}") from None
    if response.status_code != 200:
        raise EndpointError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise EndpointError(f"{path}: the answer is not JSON") from None


def preflight(client, url: str) -> None:
    """Refuse an endpoint that cannot be reached or refuses the key, before any model loads."""
    import httpx

    try:
        response = client.get("/v1/models")
    except httpx.HTTPError as exc:
        raise InputError(f"cannot reach {url}: {exc or type(exc).__name__}", field="URL") from None
    if response.status_code in (401, 403):
        raise InputError(f"{url} refused the request with HTTP {response.status_code}: give its key with --api-key "
                         "(or LAMRA_API_KEY)", field="--api-key")


def open_client(url: str, api_key: str | None, *, timeout: float = 120.0):
    """An httpx client at ``url`` (the server's root or its /v1 base: both work)."""
    import httpx

    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    if not base.startswith(("http://", "https://")):
        raise InputError(f"the URL must start with http:// or https://, got {url!r}", field="URL")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def format_report(report: Report) -> str:
    """The report as aligned text lines: each probe, each modality, the likely causes."""
    lines = [f"parity of {report.url} {report.route} (model {report.model}) against the reference, "
             f"tolerance {report.tolerance:g}"]
    for r in report.probes:
        cosine = "-" if r.cosine is None else f"{r.cosine:.6f}"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        lines.append(f"  {'ok  ' if r.passed else 'FAIL'} {r.name:<22} {r.modality:<11} cosine {cosine:<9} "
                     f"max|diff| {diff}" + (f"  ({r.error})" if r.error else ""))
    for modality, entry in report.modalities.items():
        cosine = "-" if entry["min_cosine"] is None else f"{entry['min_cosine']:.6f}"
        diff = "-" if entry["max_abs_diff"] is None else f"{entry['max_abs_diff']:.2e}"
        lines.append(f"  {modality:<11} {entry['passed']}/{entry['probes']} passed, lowest cosine {cosine}, "
                     f"largest |diff| {diff}")
    for cause in report.likely_causes:
        lines.append(f"  likely cause: {cause}")
    lines.append("parity: PASS" if report.passed else
                 f"parity: FAIL ({sum(not r.passed for r in report.probes)} of {len(report.probes)} probes)")
    return "\n".join(lines)
