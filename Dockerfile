# syntax=docker/dockerfile:1.7
# One image per binary:
#   docker build -t conversation-service .
#   docker build -t token-service --build-arg BIN=token-service --build-arg PORT=50052 .
# BuildKit cache mounts keep the cargo registry and target/ between builds, so a code
# change recompiles our crates only, not every dependency.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG BIN=conversation-service
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin "${BIN}" \
    && cp "target/release/${BIN}" /server
# token-service's SQLite and backup directories, owned by the runtime user: an empty named
# volume mounted on one starts with this owner.
RUN mkdir /data /backups && chown 65534:65534 /data /backups

# glibc and libgcc, no shell, no package manager; the binary has no other native
# dependency (SQLite is compiled in, PostgreSQL is spoken in Rust).
FROM gcr.io/distroless/cc-debian12:nonroot
ARG BIN=conversation-service
ARG PORT=50051
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="${BIN}" \
      org.opencontainers.image.description="token chat: ${BIN} (gRPC)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="README.md and docs/design.md in the repository"
COPY --from=build /server /usr/local/bin/server
COPY --from=build --chown=65534:65534 /data /data
COPY --from=build --chown=65534:65534 /backups /backups
# TOKEN_DB_PATH is a file path, not a secret.
# hadolint ignore=DL3064
ENV LISTEN_ADDR=0.0.0.0:${PORT} \
    TOKEN_DB_PATH=/data/token.db \
    LOG_FORMAT=json
EXPOSE ${PORT}
# nobody:nogroup (the tag's default user is 65532; 65534 owns /data)
USER 65534:65534
# `server healthcheck` asks the server's own gRPC health service (no shell in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/server", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/server"]
