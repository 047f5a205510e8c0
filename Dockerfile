# Image of the loyalty-cdp worker and CLI for the production compose file.
FROM python:3.11-slim
WORKDIR /opt/loyalty-cdp
COPY pyproject.toml README.md ./
COPY app ./app
COPY streams ./streams
COPY connectors ./connectors
COPY migrations ./migrations
COPY config ./config
COPY schemas ./schemas
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 cdp
ENV LOYALTY_CDP_CONNECTORS_DIR=/opt/loyalty-cdp/connectors \
    LOYALTY_CDP_MAPPINGS_DIR=/opt/loyalty-cdp/connectors/mappings \
    LOYALTY_CDP_TOPICS_FILE=/opt/loyalty-cdp/config/topics.yaml \
    LOYALTY_CDP_PROGRAM_FILE=/opt/loyalty-cdp/config/program.yaml \
    LOYALTY_CDP_MIGRATIONS=/opt/loyalty-cdp/migrations
USER cdp
ENTRYPOINT ["loyalty-cdp"]
