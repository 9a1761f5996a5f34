# The Sixfold image where a registry is reachable: `docker build -t sixfold:latest .`
# Without a registry, `sixfold image build` makes the same image (the same Debian release
# and packages, the same virtualenv at /opt/sixfold) from debootstrap and local wheels.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv iproute2 procps iptables \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY proto /src/proto
COPY sixfold /src/sixfold
RUN python3 -m venv /opt/sixfold \
 && /opt/sixfold/bin/pip install --no-cache-dir --disable-pip-version-check /src \
 && rm -rf /src
ENV PATH=/opt/sixfold/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 LANG=C.UTF-8
CMD ["sixfold", "--help"]
