# One image for every kfac-lab process (API, migrations, workers); the command selects the role.
# The API process never imports torch, so the same image serves it without cost at run time.
#
#   docker build -t kfac-lab .                                   # torch from your default index
#   docker build -t kfac-lab:cpu --build-arg TORCH_INDEX_URL=... .  # e.g. a CPU-only wheel index
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.3"
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    KFAC_HOME=/var/lib/kfac-lab KFAC_ARTIFACTS_DIR=/var/lib/kfac-lab/artifacts \
    KFAC_DATA_DIR=/var/lib/kfac-lab/data

WORKDIR /app
# torch first and alone: it is the big layer, and the index decides CPU or CUDA build.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install --no-cache-dir "$TORCH_SPEC"; \
    fi
COPY pyproject.toml README.md alembic.ini ./
COPY kfac ./kfac
COPY worker ./worker
COPY backend ./backend
COPY frontend ./frontend
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --create-home kfac \
    && mkdir -p /var/lib/kfac-lab && chown kfac /var/lib/kfac-lab
USER kfac
EXPOSE 8000
CMD ["kfac-lab", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
