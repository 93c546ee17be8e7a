# The molecule-connect worker image (used by docker-compose.temporal.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY workflows ./workflows
COPY activities ./activities
COPY worker ./worker
COPY devplatform ./devplatform
RUN pip install --no-cache-dir . && useradd --create-home connector
USER connector
# Connects to TEMPORAL_ADDRESS; tokens come from MOLECULE_TOKENS_FILE (a mounted secret), never from the image.
ENTRYPOINT ["molecule-connect"]
CMD ["worker"]
