# The dashboard as a production image: CPU torch by default, a CUDA build through TORCH_INDEX (README, "Docker").
# Debian's Python base, as the stack in shared notes was verified on (bookworm, Python 3.11).
FROM python:3.11-slim-bookworm

# Where torch comes from: the CPU wheels by default; for a GPU image pass a CUDA index, e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (one PyTorch publishes for the pinned version).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# true: also install Ray (requirements-ray.txt), so the dashboard can send sweeps to DPSAT_RAY_ADDRESS.
ARG INSTALL_RAY=false

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BROWSER_PATH=/usr/bin/chromium \
    DPSAT_STORE=/data/runs.db

# Debian's Chromium renders figures to PNG, SVG and PDF (kaleido); nothing downloads a browser at run time.
# Not version-pinned: Debian replaces a package's version with each security update, so a pin stops building.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-ray.txt ./
# torch first, alone, from TORCH_INDEX only, at the version requirements.txt pins; the rest then comes from PyPI
# with torch already satisfied, so no other index can offer (or swap in) another torch build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "$(grep -E '^torch==' requirements.txt)" \
    && pip install --no-cache-dir -r requirements.txt \
    && if [ "${INSTALL_RAY}" = "true" ]; then pip install --no-cache-dir -r requirements-ray.txt; fi

COPY pyproject.toml ./
COPY .streamlit ./.streamlit
COPY dpsat_core ./dpsat_core
COPY dashboard ./dashboard
COPY pages ./pages
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin dpsat \
    && mkdir -p /data \
    && chown dpsat:dpsat /data

# The run store (and uploaded data next to it) lives on a volume: it outlives the container.
VOLUME ["/data"]
USER 10001
WORKDIR /data
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
# Binds every interface inside the container (publish it as -p 127.0.0.1:8501:8501); no authentication: README.
CMD ["dpsat", "dashboard", "--address", "0.0.0.0", "--port", "8501", "--production"]
