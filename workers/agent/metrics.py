"""The load figures the agent reports, read from a vLLM server's Prometheus `/metrics`.

vLLM labels its series (model_name, engine); a server with several engines has one
series per engine, so counts and token counters are summed and the KV-cache usage is
the highest of them (the fullest engine is the one that limits new requests).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from workers.protocol import ReplicaLoad

# sample name in /metrics -> ReplicaLoad field, how several series combine
SUMMED = {
    "vllm:num_requests_running": "num_requests_running",
    "vllm:num_requests_waiting": "num_requests_waiting",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
}
MAXED = {
    "vllm:kv_cache_usage_perc": "kv_cache_usage_perc",
    # the name before vLLM 0.10; kept so older GPU images report load too
    "vllm:gpu_cache_usage_perc": "kv_cache_usage_perc",
}


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition format."""


def parse_load(text: str) -> ReplicaLoad:
    """The ReplicaLoad in one `/metrics` page; fields the page lacks are left out."""
    load: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in SUMMED:
                    field = SUMMED[sample.name]
                    load[field] = load.get(field, 0.0) + float(sample.value)
                elif sample.name in MAXED:
                    field = MAXED[sample.name]
                    load[field] = max(load.get(field, 0.0), float(sample.value))
    except (ValueError, IndexError, TypeError) as error:
        raise MetricsParseError(f"cannot parse /metrics: {error}") from error
    return load  # type: ignore[return-value]
