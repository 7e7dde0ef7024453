# harbor-relay container image.
#   docker build -t harbor-relay .
#   docker run -v relay-store:/var/lib/harbor-relay -v $PWD/relay.toml:/etc/harbor-relay/harbor-relay.toml:ro \
#              -e HARBOR_WEBHOOK_SECRET=... -p 8080:8080 harbor-relay

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin harbor-relay \
 && strip target/release/harbor-relay

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/harbor-relay --shell /usr/sbin/nologin harbor-relay \
 && mkdir -p /var/lib/harbor-relay /etc/harbor-relay \
 && chown harbor-relay:harbor-relay /var/lib/harbor-relay
COPY --from=build /src/target/release/harbor-relay /usr/local/bin/harbor-relay
USER harbor-relay
VOLUME ["/var/lib/harbor-relay"]
EXPOSE 8080
ENV HARBOR_RELAY_CONFIG=/etc/harbor-relay/harbor-relay.toml
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/harbor-relay"]
CMD ["serve"]
