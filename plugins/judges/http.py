"""An OpenAI-compatible chat endpoint as a pairwise judge (``POST {base_url}/chat/completions``).

For people who have an endpoint (a local vLLM or llama.cpp server, or a hosted API). The request
asks for one token at temperature 0; the reply's first standalone "A" or "B" is the verdict, and a
reply naming neither is a tie. The API key is read from the environment variable the options name,
never from a command line or a stored record. Standard library only (urllib).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Any, Mapping, Sequence

from ldreg.judging.judge import PAIRWISE_INSTRUCTIONS, Judge, JudgeError, JudgeQuery, pairwise_prompt

LETTER = re.compile(r"\b([AB])\b")


def parse_verdict(reply: str) -> str:
    """The first standalone A or B of the reply ("B", "B.", "Response A"), else "tie"."""
    match = LETTER.search(reply or "")
    return match.group(1) if match else "tie"


class HTTPJudge(Judge):
    name = "http"
    description = "an OpenAI-compatible chat/completions endpoint (base_url, model; key from an env var)"
    options = {
        "base_url": (None, "the API root, e.g. http://localhost:8000/v1"),
        "model": (None, "the model name the endpoint serves"),
        "api_key_env": ("OPENAI_API_KEY", "the environment variable holding the API key ('' for none)"),
        "timeout": (60, "seconds to wait for each reply"),
        "max_chars": (1500, "characters kept of the message and of each response"),
    }

    def identity(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return {"base_url": str(settings["base_url"]).rstrip("/"), "model": str(settings["model"]),
                "max_chars": int(settings["max_chars"])}

    def _headers(self, settings: Mapping[str, Any]) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        env = str(settings["api_key_env"] or "")
        if env:
            key = os.environ.get(env)
            if not key:
                raise JudgeError(f"judge 'http': the environment variable {env} (option api_key_env) is not set; "
                                 f"export it, or pass --option api_key_env= for an endpoint without a key")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def ask(self, query: JudgeQuery, settings: Mapping[str, Any], headers: dict[str, str]) -> str:
        url = str(settings["base_url"]).rstrip("/") + "/chat/completions"
        body = {"model": str(settings["model"]), "temperature": 0, "max_tokens": 1, "seed": 0,
                "messages": [{"role": "system", "content": PAIRWISE_INSTRUCTIONS},
                             {"role": "user", "content": pairwise_prompt(query, int(settings["max_chars"]))}]}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=float(settings["timeout"])) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise JudgeError(f"judge 'http': {url} answered HTTP {exc.code} ({' '.join(detail.split())}); "
                             f"check the options base_url and model and the key in {settings['api_key_env']}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeError(f"judge 'http': cannot reach {url} ({reason}); check the option base_url "
                             f"and that the server is running") from None
        except ValueError:
            raise JudgeError(f"judge 'http': {url} did not answer JSON; is base_url the API root "
                             f"(ending in /v1 for most servers)?") from None
        try:
            return str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge 'http': {url} answered without choices[0].message.content; "
                             f"is it an OpenAI-compatible chat endpoint?") from None

    def verdicts(self, queries: Sequence[JudgeQuery], settings: Mapping[str, Any]) -> list[str]:
        headers = self._headers(settings)
        return [parse_verdict(self.ask(q, settings, headers)) for q in queries]
