# VOXL's image: the code location (Dagster user-code deployment), its run pods and Celery workers.
# Slim, non-root, dependencies exactly as uv.lock pins them. Not built on the development machines
# (no Docker there): see README, "Kubernetes".
FROM python:3.11-slim-bookworm

# openssh-client: SFTP destinations go through OpenSSH's sftp (voxl_assets/upload/openssh.py).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir uv \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin voxl

WORKDIR /opt/voxl
ENV UV_PROJECT_ENVIRONMENT=/opt/voxl/.venv \
    UV_LINK_MODE=copy \
    PATH=/opt/voxl/.venv/bin:$PATH \
    VOXL_DEPLOYMENT=production \
    VOXL_HOME=/var/lib/voxl \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    UV_COMPILE_BYTECODE=1

# Dependencies first (a layer that changes only with uv.lock), then the code.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY voxl_assets ./voxl_assets
COPY resources ./resources
COPY sensors ./sensors
COPY io_managers ./io_managers
COPY project_definitions ./project_definitions
COPY deployments ./deployments
COPY workspace.yaml ./
RUN uv sync --frozen --no-dev \
    && mkdir -p /var/lib/voxl /opt/dagster/dagster_home \
    && chown -R voxl:voxl /var/lib/voxl /opt/dagster/dagster_home

USER 10001
# The Helm chart runs `dagster api grpc` with the values' dagsterApiGrpcArgs on this port.
EXPOSE 3030
CMD ["dagster", "api", "grpc", "--module-name", "voxl_assets.definitions", "--attribute", "defs", "--host", "0.0.0.0", "--port", "3030"]
