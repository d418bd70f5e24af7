# Cairn in one container: `docker build -t cairn . && docker run -p 7070:7070 -v cairn-data:/data cairn`
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
EXPOSE 7070
ENV CAIRN_LISTEN=0.0.0.0:7070 \
    CAIRN_DATA=/data \
    CAIRN_LOG_FORMAT=json
# The health check asks the server's own grpc.health.v1 service.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["cairn", "health", "--addr", "http://127.0.0.1:7070"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cairn"]
