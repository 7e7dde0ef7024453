# harbor-relay container image: a static-ish Rust binary on distroless,
# running as a non-root user. Checked by the tests with hadolint.
#
#   docker build -t harbor-relay .
#   docker run -d --name harbor-relay -p 8080:8080 \
#     -v relay-store:/var/lib/harbor-relay \
#     -v $PWD/harbor-relay.toml:/etc/harbor-relay/harbor-relay.toml:ro \
#     -v $PWD/secrets:/run/secrets/harbor-relay:ro \
#     harbor-relay
#
# In the config: [store] path = "/var/lib/harbor-relay/store", and secrets
# as password_file / webhook_auth_file under /run/secrets/harbor-relay.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin harbor-relay \
 && strip target/release/harbor-relay \
 && mkdir -p /out/var/lib/harbor-relay /out/etc/harbor-relay

# glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/harbor-relay /usr/local/bin/harbor-relay
# The store volume must belong to the user the daemon runs as.
COPY --from=build --chown=65532:65532 /out/var/lib/harbor-relay /var/lib/harbor-relay
COPY --from=build /out/etc/harbor-relay /etc/harbor-relay
USER 65532:65532
VOLUME ["/var/lib/harbor-relay"]
EXPOSE 8080
ENV HARBOR_RELAY_CONFIG=/etc/harbor-relay/harbor-relay.toml
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["/usr/local/bin/harbor-relay", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/harbor-relay"]
CMD ["serve"]
