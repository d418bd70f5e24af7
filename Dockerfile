# Cairn in one container. It listens on 0.0.0.0, so it needs TLS or an
# explicit --insecure; without either it exits with one line saying so.
#
#   docker build -t cairn .
#   cairn dev-certs --out certs            # or your own certificate and key
#
# TLS (authentication on; the first start writes the admin's password to
# /data/initial-admin-password unless CAIRN_INITIAL_ADMIN_PASSWORD is given):
#   docker run -p 7070:7070 -v cairn-data:/data -v "$PWD/certs:/certs:ro" \
#     -e CAIRN_TLS_CERT_FILE=/certs/server.pem -e CAIRN_TLS_KEY_FILE=/certs/server.key \
#     -e CAIRN_ADDR=https://localhost:7070 -e CAIRN_CA_FILE=/certs/ca.pem cairn
#   (CAIRN_ADDR and CAIRN_CA_FILE are for the HEALTHCHECK's `cairn health`; the
#   server certificate must name localhost, as dev-certs' does. The key must be
#   readable by the container's user, uid 10001: dev-certs writes it 0600 for
#   you, so `chown 10001 certs/server.key` or copy it with other permissions.)
#
# Plaintext without authentication (development only):
#   docker run -p 7070:7070 -v cairn-data:/data cairn --insecure
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cairn-cli --bin cairn \
 && cp target/release/cairn /usr/local/bin/cairn

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin cairn \
 && mkdir -p /data && chown cairn:cairn /data
COPY --from=build /usr/local/bin/cairn /usr/local/bin/cairn
USER cairn
VOLUME ["/data"]
# 7070: cairn.v1 gRPC; 2113: the KurrentDB-compatible facade; 2114: HTTP
# (/metrics and the admin UI).
EXPOSE 7070 2113 2114
ENV CAIRN_LISTEN=0.0.0.0:7070 \
    CAIRN_KURRENT_LISTEN=0.0.0.0:2113 \
    CAIRN_HTTP_LISTEN=0.0.0.0:2114 \
    CAIRN_DATA=/data \
    CAIRN_LOG_FORMAT=json \
    CAIRN_ADDR=http://127.0.0.1:7070
# The health check asks the server's own grpc.health.v1 service (no
# credentials needed) at CAIRN_ADDR, trusting CAIRN_CA_FILE when it is https.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["cairn", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cairn"]
