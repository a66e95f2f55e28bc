"""One client for every LLM call: any OpenAI-compatible chat-completions server.

Point it at vLLM, llama.cpp's server, Ollama or OpenAI by base URL and model name; the API key
is read from the environment variable named in the config and is never written to a log, a
cache entry or a result. The client bounds how many requests are in flight, retries 429, 5xx,
timeouts, connection errors and answers that do not parse (with exponential backoff and the
server's ``Retry-After``), caches every answer that parsed on disk keyed by the full request
(so a rerun sends nothing and gives the same result), and counts requests and tokens.
After the last retry a call raises :class:`LLMFailure`; callers record it for that latent and
go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saelab.config import option
from saelab.io import atomic_write_json

log = logging.getLogger("saelab.interp")
T = TypeVar("T")
Messages = list[dict[str, str]]


class AnswerError(ValueError):
    """The server answered, but the answer is unusable (malformed, refused, wrong format)."""


class LLMFailure(RuntimeError):
    """A request failed after every retry; the message says what went wrong last."""


@dataclass
class LLMConfig:
    """Where the LLM is and how to talk to it."""

    base_url: str = option("http://127.0.0.1:8000/v1",
                           "OpenAI-compatible server URL, e.g. http://localhost:8000/v1 (vLLM), "
                           "http://localhost:11434/v1 (Ollama), https://api.openai.com/v1")
    model: str = option("", "model name the server knows")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key "
                              "(read at run time, never written anywhere)")
    max_concurrency: int = option(8, "requests in flight at most")
    max_retries: int = option(4, "retries per request after 429/5xx/timeouts/unusable answers")
    timeout_s: float = option(60.0, "seconds before one request times out")
    backoff_s: float = option(1.0, "first retry delay; doubles each retry (with jitter)")
    max_backoff_s: float = option(30.0, "longest retry delay")
    temperature: float = option(0.0, "sampling temperature")
    max_tokens: int = option(512, "largest answer in tokens")
    top_logprobs: int = option(5, "alternatives per token when logprobs are requested")
    cache_dir: str = option("", "on-disk response cache folder ('' = no cache)")

    def validate(self) -> None:
        if not self.model:
            raise ValueError("no LLM model name: pass --llm-model NAME (the name your "
                             "OpenAI-compatible server serves)")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")


@dataclass
class Completion:
    """A chat answer: its text and, when asked for, the top alternatives of every token."""

    text: str
    tokens: list[str] = field(default_factory=list)
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(text=d["text"], tokens=list(d.get("tokens", [])),
                   top_logprobs=[[(t, float(lp)) for t, lp in alts]
                                 for alts in d.get("top_logprobs", [])],
                   prompt_tokens=int(d.get("prompt_tokens", 0)),
                   completion_tokens=int(d.get("completion_tokens", 0)), cached=True)


@dataclass
class Usage:
    """Request and token accounting for one client."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def line(self) -> str:
        return (f"requests {self.requests} (cached {self.cache_hits}, retried {self.retries}, "
                f"failed {self.failures}) | tokens {self.prompt_tokens:,} in "
                f"{self.completion_tokens:,} out")


class ResponseCache:
    """Parsed-OK answers on disk, one JSON file per request, keyed by the SHA-256 of the full
    request body (model, messages, sampling and logprob options; never the key or the URL)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self._path(key)
        try:
            return Completion.from_dict(json.loads(path.read_text())["completion"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            return None  # missing or unreadable entries are simply asked again

    def put(self, key: str, request: dict[str, Any], completion: Completion) -> None:
        atomic_write_json(self._path(key), {"request": request,
                                            "completion": completion.to_dict()})


class LLMClient:
    """Chat completions with concurrency bound, retries, cache and accounting."""

    def __init__(self, cfg: LLMConfig, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        cfg.validate()
        self.cfg = cfg
        self.usage = Usage()
        self.cache = ResponseCache(cfg.cache_dir) if cfg.cache_dir else None
        self._semaphore: asyncio.Semaphore | None = None
        self._client: Any = None
        self._sleep = sleep

    def _openai(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError as err:
                raise ImportError("the LLM client needs openai: pip install 'saelab[explain]'") \
                    from err
            # Local servers take any key; the openai package insists on a non-empty one.
            key = os.environ.get(self.cfg.api_key_env) or "EMPTY"
            self._client = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=key,
                                              max_retries=0, timeout=self.cfg.timeout_s)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections; the next call (in any event loop) opens new ones."""
        if self._client is not None:
            await self._client.close()
        self._client = None
        self._semaphore = None

    def _gate(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.cfg.max_concurrency)
        return self._semaphore

    def request_body(self, messages: Messages, *, logprobs: bool = False,
                     max_tokens: int | None = None, temperature: float | None = None
                     ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model, "messages": messages,
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.cfg.max_tokens, "stream": False,
        }
        if logprobs:
            body.update(logprobs=True, top_logprobs=self.cfg.top_logprobs)
        return body

    async def complete(self, messages: Messages, parse: Callable[[Completion], T], *,
                       logprobs: bool = False, max_tokens: int | None = None,
                       temperature: float | None = None) -> T:
        """Ask, parse with ``parse`` (which raises AnswerError on an unusable answer), retry
        on transient errors and unusable answers, and cache the answer once it parsed."""
        body = self.request_body(messages, logprobs=logprobs, max_tokens=max_tokens,
                                 temperature=temperature)
        key = ResponseCache.key(body)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            try:
                value = parse(hit)
                self.usage.cache_hits += 1
                return value
            except AnswerError:
                pass  # the parser changed since the entry was written: ask again
        last = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.usage.retries += 1
            try:
                completion = await self._send(body)
                value = parse(completion)
            except AnswerError as err:
                last = f"unusable answer: {err}"
                log.info("retrying (%s)", last)
                continue
            except LLMFailure:
                self.usage.failures += 1
                raise
            except _Transient as err:
                last = str(err)
                delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** attempt)
                delay = max(delay * (0.5 + random.random() / 2), err.retry_after)
                log.info("retrying in %.1fs (%s)", delay, last)
                if attempt < self.cfg.max_retries:
                    await self._sleep(delay)
                continue
            if self.cache is not None:
                self.cache.put(key, body, completion)
            return value
        self.usage.failures += 1
        raise LLMFailure(f"gave up after {self.cfg.max_retries + 1} attempts: {last}")

    async def _send(self, body: dict[str, Any]) -> Completion:
        import openai

        client = self._openai()
        async with self._gate():
            self.usage.requests += 1
            try:
                response = await client.chat.completions.create(**body)
            except openai.APIStatusError as err:
                if err.status_code == 429 or err.status_code >= 500:
                    raise _Transient(f"HTTP {err.status_code}", _retry_after(err)) from err
                raise LLMFailure(f"the server rejected the request (HTTP {err.status_code}): "
                                 f"{_short(err.message)}; check --llm-model, the URL and the "
                                 "API key variable") from err
            except openai.APITimeoutError as err:
                raise _Transient(f"timed out after {self.cfg.timeout_s}s") from err
            except openai.APIConnectionError as err:
                raise _Transient(f"cannot reach {self.cfg.base_url}: {err}") from err
            except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as err:
                raise AnswerError(f"malformed response body: {_short(str(err))}") from err
        completion = _completion(response)
        self.usage.prompt_tokens += completion.prompt_tokens
        self.usage.completion_tokens += completion.completion_tokens
        return completion


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(err: Any) -> float:
    try:
        return float(err.response.headers.get("retry-after", 0) or 0)
    except (TypeError, ValueError, AttributeError):
        return 0.0


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _completion(response: Any) -> Completion:
    """Read a ChatCompletion; refusals, empty or filtered answers raise AnswerError."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise AnswerError("the response has no choices")
    choice = choices[0]
    message = choice.message
    if getattr(message, "refusal", None):
        raise AnswerError(f"the model refused: {_short(message.refusal)}")
    if choice.finish_reason == "content_filter":
        raise AnswerError("the answer was stopped by the server's content filter")
    text = message.content
    if not isinstance(text, str) or not text.strip():
        raise AnswerError("the answer is empty")
    tokens: list[str] = []
    alternatives: list[list[tuple[str, float]]] = []
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    for item in content:
        tokens.append(item.token)
        alts = [(a.token, float(a.logprob)) for a in (item.top_logprobs or [])]
        alternatives.append(alts or [(item.token, float(item.logprob))])
    usage = getattr(response, "usage", None)
    return Completion(text=text, tokens=tokens, top_logprobs=alternatives,
                      prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                      completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))
